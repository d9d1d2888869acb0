"""Errors of the HTTP gateway: each one is an HTTP answer to the caller's mistake (4xx) or
ours (5xx), and carries its status, so the app maps them in one handler."""

from __future__ import annotations

from yibao.errors import YibaoError


class GatewayError(YibaoError):
    """A request the gateway refuses; ``status`` is the HTTP status it answers with."""

    status = 400

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class Unauthorized(GatewayError, PermissionError):
    status = 401


class Forbidden(GatewayError, PermissionError):
    status = 403


class NotFound(GatewayError, LookupError):
    status = 404


class Conflict(GatewayError, ValueError):
    """The same ``event_id`` with a different body: idempotency refuses it."""

    status = 409


class TooLarge(GatewayError, ValueError):
    status = 413


class Invalid(GatewayError, ValueError):
    status = 422


class Unavailable(GatewayError, ConnectionError):
    """The broker cannot be reached: nothing was published, the caller retries."""

    status = 503


class ClientFileError(YibaoError, ValueError):
    """The credentials file is unreadable or malformed (names the entry)."""
