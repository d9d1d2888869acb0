"""Errors of the live stages, under the project's one root error (``YibaoError``)."""

from __future__ import annotations

from yibao.errors import YibaoError


class StreamsError(YibaoError):
    """A live-pipeline failure."""


class StoreError(StreamsError):
    """A local state store that cannot be opened or used; the message names the store."""
