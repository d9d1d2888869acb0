"""The hospital gateway: gateway.md's HTTP front door to the pipeline.

Hospitals never hold Kafka credentials: they call ``yibao gateway serve`` with an API key,
and it validates, checks who may do what, publishes to ``care`` and answers with the
settlement while the patient waits. See docs/gateway.md.
"""

from yibao.gateway.app import create_app
from yibao.gateway.service import Answer, Service

__all__ = ["Answer", "Service", "create_app"]
