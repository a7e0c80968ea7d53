"""Calendar periods in any time zone, DST edges included: bounds contain the instant and agree with keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.budgets import Period, period_bounds, period_key

ZONES = ["UTC", "America/New_York", "America/Santiago", "America/Havana", "Pacific/Chatham",
         "Australia/Lord_Howe", "Asia/Kathmandu", "Europe/London", "Pacific/Apia"]
"""Zones with 30- and 45-minute offsets, DST at midnight, and a skipped day (Apia, 2011-12-30)."""

instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC))


@given(period=st.sampled_from([Period.DAY, Period.WEEK, Period.MONTH]), tz=st.sampled_from(ZONES), at=instants)
def test_bounds_contain_the_instant_and_delimit_its_key(period: Period, tz: str, at: datetime) -> None:
    """start <= at < end; the instant before start and the end instant belong to other periods."""
    bounds = period_bounds(period, tz, at)
    assert bounds is not None
    start, end = bounds
    assert start <= at < end
    key = period_key(period, tz, at)
    assert period_key(period, tz, start) == key == period_key(period, tz, end - timedelta(microseconds=1))
    assert period_key(period, tz, start - timedelta(microseconds=1)) != key != period_key(period, tz, end)
