"""Errors of the projections, under the project's one root error (``YibaoError``), each mixed
with the builtin it is."""

from __future__ import annotations

from yibao.errors import YibaoError


class RegionError(YibaoError, ValueError):
    """A bad region code, or a projection that cannot be scoped."""


class PartsError(YibaoError, ValueError):
    """Replay parts that cannot be merged (overlapping, missing, unfinished or mismatched
    partition ranges), or a bad partition range."""
