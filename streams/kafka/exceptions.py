"""Errors of the Kafka edge, under the project's one root error (``YibaoError``), each mixed
with the builtin it is, so code that knows nothing of yibao still catches what it expects."""

from __future__ import annotations

from yibao.errors import YibaoError


class KafkaEdgeError(YibaoError):
    """A failure at the Kafka edge (clients, admin, changelog reads, fencing)."""


class KafkaSecurityError(KafkaEdgeError, ValueError):
    """The TLS files named by the settings cannot be used; the message names the variable."""


class KafkaAccessError(KafkaEdgeError, ConnectionError):
    """A Kafka server refused or failed the connection; the message says why and what to check."""


class ReadTimeout(KafkaEdgeError, TimeoutError):
    """A read of a changelog or topic did not reach its end offsets in time; the message
    names the topic."""


class TopicConfigError(KafkaEdgeError, ValueError):
    """A topic exists with a configuration the pipeline cannot run on (e.g. an input topic
    whose record timestamps are not the broker's append time) and could not be fixed."""
