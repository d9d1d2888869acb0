"""Errors of the projections, under the project's one root error (``YibaoError``), each mixed
with the builtin it is."""

from __future__ import annotations

from yibao.errors import YibaoError


class RegionError(YibaoError, ValueError):
    """A bad region code, or a projection that cannot be scoped."""
