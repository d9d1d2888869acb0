"""The one clock: China's UTC+08:00, in which the bureau counts days.

events.md defines a visit's *service date* as the calendar date of ``opened_at`` in UTC+08:00,
and the benefit year, the registration days and the ledger's booking day follow the same
calendar. China keeps no daylight saving, so a fixed offset is exact; every form the code needs
(an aware ``tzinfo``, a date of an aware instant, a day number of an epoch-millisecond instant)
lives here so no module spells ``+8 hours`` on its own.
"""

from __future__ import annotations

import datetime as dt

__all__ = [
    "DAY_MS",
    "OFFSET",
    "OFFSET_MS",
    "OFFSET_TEXT",
    "UTC8",
    "ZONE_NAME",
    "as_local",
    "local_date",
    "local_day",
    "local_midnight_ms",
    "ms_local_date",
]

OFFSET = dt.timedelta(hours=8)
"""UTC+08:00 as a ``timedelta``."""
OFFSET_MS = 8 * 3_600_000
"""UTC+08:00 in milliseconds, for instants kept as epoch milliseconds."""
OFFSET_TEXT = "+08:00"
"""The RFC 3339 offset suffix of a local timestamp."""
UTC8 = dt.timezone(OFFSET)
"""The ``tzinfo`` of UTC+08:00 (its ``tzname`` is ``UTC+08:00``)."""
ZONE_NAME = "Asia/Shanghai"
"""The IANA name of the same clock, for SQL engines that take a named zone (no DST since 1991)."""
DAY_MS = 86_400_000
"""One calendar day in milliseconds."""

_EPOCH = dt.date(1970, 1, 1)


def local_date(ts: dt.datetime) -> dt.date:
    """The calendar date of an aware instant in UTC+08:00: the spec's *service date*."""
    return ts.astimezone(UTC8).date()


def as_local(ts: dt.datetime) -> dt.datetime:
    """A naive timestamp read as UTC+08:00 (a user typing a time means the bureau's clock)."""
    return ts.replace(tzinfo=UTC8) if ts.tzinfo is None else ts


def local_day(ms: int) -> int:
    """The UTC+08:00 calendar day of an epoch-millisecond instant, as days since 1970-01-01."""
    return (ms + OFFSET_MS) // DAY_MS


def ms_local_date(ms: int) -> dt.date:
    """The UTC+08:00 calendar date of an epoch-millisecond instant (a broker timestamp)."""
    return _EPOCH + dt.timedelta(days=local_day(ms))


def local_midnight_ms(day: int) -> int:
    """The epoch milliseconds of 00:00 UTC+08:00 on ``day`` (days since 1970-01-01)."""
    return day * DAY_MS - OFFSET_MS
