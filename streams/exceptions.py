"""Errors of the live stages, under the project's one root error (``YibaoError``), each mixed
with the builtin it is. The Kafka edge's own errors are in :mod:`yibao.streams.kafka.exceptions`."""

from __future__ import annotations

from yibao.errors import YibaoError


class StreamsError(YibaoError, RuntimeError):
    """A live-pipeline failure."""


class StoreError(StreamsError, OSError):
    """A local state store that cannot be opened or used; the message names the store."""


class NoSuchTopic(StreamsError, LookupError):
    """A topic the pipeline needs is not on the broker; the message names it."""


class StageStalled(StreamsError, TimeoutError):
    """A batch outlived what its transaction could (the Kafka client stopped answering);
    the message names the stage. The worker exits so its supervisor starts a fresh one."""
