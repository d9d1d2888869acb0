"""The two SQL helpers every projection module shares: a string literal and a region.

DuckDB takes parameters for values but not for ``ATTACH`` paths, ``COPY ... TO`` files or
``SET`` values, so those are written as quoted literals, always through
:func:`sql_literal`. A region reaches SQL only through :func:`region_predicate`, which
refuses anything but a 6-digit code (so a hostile region can never become SQL).
"""

from __future__ import annotations

import re
from pathlib import Path

from yibao.projections.exceptions import RegionError

_REGION = re.compile(r"^\d{6}$")


def sql_literal(value: str | Path) -> str:
    """``value`` as a SQL string literal, quotes included (``'it''s'``)."""
    return "'" + str(value).replace("'", "''") + "'"


def check_region(region: str) -> str:
    """``region`` if it is a 6-digit region code, else RegionError naming it."""
    if not isinstance(region, str) or not _REGION.match(region):
        raise RegionError(f"region must be a 6-digit code such as 500000 or 500112, not {region!r}")
    return region


def region_predicate(column: str, region: str) -> str:
    """SQL: ``column`` is in ``region`` (exact code; ``NN0000`` = the whole province NN)."""
    check_region(region)
    if region.endswith("0000"):
        return f"left({column}, 2) = '{region[:2]}'"
    return f"{column} = '{region}'"
