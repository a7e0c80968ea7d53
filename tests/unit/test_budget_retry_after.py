"""A budget refusal says how long until waiting helps: the period roll-over, when a fresh period fits."""

from __future__ import annotations

from datetime import UTC, datetime

from comptroller.domain.admission import decide
from comptroller.domain.budgets import ANY_SCOPE, Budget, Period
from comptroller.domain.ledger import AccountView
from comptroller.domain.scopes import Level

NOW = datetime(2025, 6, 2, 23, 0, tzinfo=UTC)


def _account(period: Period, limit_mc: int, settled_mc: int, timezone: str = "UTC") -> AccountView:
    return AccountView(Budget(Level.AGENT, ANY_SCOPE, limit_mc, period, timezone), "ns|t|a", "p", settled_mc, 0)


def test_a_day_budget_refusal_waits_until_midnight_in_its_zone() -> None:
    """23:00 UTC: a UTC day budget rolls over in 3,600 s; a Tokyo one (08:00 next day there) in 57,600 s."""
    utc = decide(100, [_account(Period.DAY, 1_000, 950)], NOW)
    tokyo = decide(100, [_account(Period.DAY, 1_000, 950, "Asia/Tokyo")], NOW)
    assert utc is not None and utc.retry_after_s == 3_600
    assert tokyo is not None and tokyo.retry_after_s == 16 * 3_600
    assert "wait 3600 s" in utc.message


def test_no_retry_after_when_waiting_never_helps() -> None:
    """A total budget, or a ceiling larger than the whole limit, has no retry-after."""
    total = decide(100, [_account(Period.TOTAL, 1_000, 950)], NOW)
    too_big = decide(2_000, [_account(Period.MONTH, 1_000, 0)], NOW)
    assert total is not None and total.retry_after_s is None
    assert too_big is not None and too_big.retry_after_s is None
    assert "wait" not in total.message
