"""Errors of the contract layer, under the project's one root error."""

from __future__ import annotations

from yibao.errors import YibaoError


class SchemaError(YibaoError, ValueError):
    """Input that is not a valid event: the message names the field (a JSON path) and the rule.

    ``path`` is the JSON path (``$.items[2].amount_fen``) when known, so a dead-letter
    consumer can group errors without parsing prose.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
