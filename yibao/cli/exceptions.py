"""Errors of the command line, under the project's one root error."""

from __future__ import annotations

from yibao.errors import YibaoError


class CliError(YibaoError):
    """A command-line failure."""


class ShardError(CliError, RuntimeError):
    """A process of a sharded fold failed; the message names it and its exit code."""
