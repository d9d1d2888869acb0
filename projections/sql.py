"""The SQL helpers every projection module shares: a literal, an identifier and a region.

Values go to DuckDB as parameters (``?``) wherever it takes them. It does not for
``ATTACH`` paths, ``COPY ... TO`` files, ``SET`` values or query text a report hands to
``COPY``, so those are written as quoted literals, always through :func:`sql_literal`;
table and database names, always through :func:`sql_identifier`. A region reaches SQL
only through :func:`region_predicate`, which refuses anything but a 6-digit code (so a
hostile region can never become SQL).
"""

from __future__ import annotations

import re
from pathlib import Path

from yibao.projections.exceptions import RegionError

_REGION = re.compile(r"^\d{6}$")


def sql_literal(value: str | Path) -> str:
    """``value`` as a SQL string literal, quotes included (``'it''s'``)."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"a""b"``), so any table name is one name."""
    return '"' + name.replace('"', '""') + '"'


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
