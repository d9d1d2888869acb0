"""Structured logging for yibao (structlog).

``configure(settings)`` once at an entry point. Output goes to stderr: JSON lines when
``log_format`` is ``json`` (or ``auto`` and stderr is not a terminal: CI, containers, pipes),
a readable coloured console rendering in a terminal. Records of the standard ``logging``
module (faust, aiokafka, mode) go through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

import structlog

if TYPE_CHECKING:
    from yibao.settings import Settings

__all__ = ["configure", "get_logger"]


def _use_json(log_format: str, stream: TextIO) -> bool:
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def configure(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's root logger from ``settings``."""
    out = stream if stream is not None else sys.stderr
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    as_json = _use_json(settings.log_format, out)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if as_json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=bool(getattr(out, "isatty", bool)()))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_yibao", False):
            root.removeHandler(old)
    handler._yibao = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party libraries are chatty at INFO; keep them at WARNING unless debugging.
    for noisy in ("aiokafka", "kafka", "faust", "mode", "urllib3", "docker"):
        logging.getLogger(noisy).setLevel(level if level <= logging.DEBUG else logging.WARNING)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger; ``initial`` key/values are bound to every event."""
    return structlog.get_logger(name, **initial)
