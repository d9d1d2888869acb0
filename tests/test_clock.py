"""The one UTC+08:00 helper: the service date and the day numbers the generator and ledger use."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from yibao import clock


def test_service_date_is_the_utc8_calendar_date() -> None:
    # 16:30 UTC is 00:30 the next day in UTC+08:00: the visit belongs to that next day.
    late = dt.datetime(2025, 3, 1, 16, 30, tzinfo=dt.UTC)
    assert clock.local_date(late) == dt.date(2025, 3, 2)
    assert clock.local_date(dt.datetime(2025, 3, 1, 15, 59, tzinfo=dt.UTC)) == dt.date(2025, 3, 1)
    assert clock.UTC8.tzname(None) == "UTC+08:00"


def test_naive_input_is_read_as_utc8() -> None:
    t = clock.as_local(dt.datetime(2025, 3, 1, 8, 0))
    assert t.utcoffset() == dt.timedelta(hours=8)
    aware = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.UTC)
    assert clock.as_local(aware) is aware


@given(st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2100, 1, 1),
                    timezones=st.just(dt.UTC)))
def test_millisecond_forms_agree_with_the_datetime_form(t: dt.datetime) -> None:
    ms = int(t.replace(microsecond=0).timestamp()) * 1000 + t.microsecond // 1000
    assert clock.ms_local_date(ms) == clock.local_date(t)
    day = clock.local_day(ms)
    assert clock.local_midnight_ms(day) <= ms < clock.local_midnight_ms(day + 1)
    midnight = dt.datetime.fromtimestamp(clock.local_midnight_ms(day) / 1000, clock.UTC8)
    assert (midnight.hour, midnight.minute, midnight.date()) == (0, 0, clock.local_date(t))
