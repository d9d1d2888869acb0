"""Errors of the dev tooling, under the project's one root error (``YibaoError``), each mixed
with the builtin it is."""

from __future__ import annotations

from yibao.errors import YibaoError


class BrokerError(YibaoError, RuntimeError):
    """The local broker cannot be started, reached or stopped; the message says what to do."""
