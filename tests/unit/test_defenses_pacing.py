"""Layer 5: a period budget is spent no faster than the period passes, within slack and burst."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comptroller.domain.budgets import Budget, Period, period_bounds
from comptroller.domain.codes import Code
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.pacing import (
    PaceAction,
    PacingConfig,
    apply_pacing,
    check_pace,
    pace_allowance_mc,
    read_pace,
)
from comptroller.domain.defenses.pinning import Route, RouteReason
from comptroller.domain.defenses.verdict import Rule, Verdict
from comptroller.domain.ledger import AccountView
from comptroller.domain.money import MC_PER_USD
from comptroller.domain.scopes import Level

JUNE = datetime(2024, 6, 1, tzinfo=UTC)
JULY = datetime(2024, 7, 1, tzinfo=UTC)
LIMIT = 100 * MC_PER_USD
SCOPE = "acme|t|writer"
MONTHLY = Budget(level=Level.AGENT, scope=SCOPE, limit_mc=LIMIT, period=Period.MONTH)
CFG = PacingConfig()


def account(settled: int, reserved: int = 0, budget: Budget = MONTHLY) -> AccountView:
    """The budget's account for June 2024."""
    return AccountView(budget=budget, scope=SCOPE, period_key="2024-06-01", settled_mc=settled, reserved_mc=reserved)


def expected_allowance(config: PacingConfig, limit: int, now: datetime) -> int:
    """The allowance in exact fractions: limit x elapsed fraction x (1 + slack), rounded down, plus burst."""
    fraction = Fraction((now - JUNE) // timedelta(microseconds=1), (JULY - JUNE) // timedelta(microseconds=1))
    paced = math.floor(limit * fraction * Fraction(100 + config.slack_pct, 100))
    return paced + limit * config.burst_pct // 100


@pytest.mark.parametrize(("now", "config"), [
    (JUNE, CFG),
    (JUNE + timedelta(days=14), CFG),
    (JUNE + timedelta(days=14, seconds=1), PacingConfig(slack_pct=0, burst_pct=0)),
    (JUNE + timedelta(days=29, hours=23), PacingConfig(slack_pct=25, burst_pct=1)),
    (JULY - timedelta(microseconds=1), CFG),
])
def test_allowance_is_limit_times_elapsed_fraction_times_slack_plus_burst(now: datetime,
                                                                         config: PacingConfig) -> None:
    """pace_allowance_mc equals the formula computed exactly with fractions."""
    assert pace_allowance_mc(config, LIMIT, JUNE, JULY, now) == expected_allowance(config, LIMIT, now)


@given(a=st.integers(0, 30 * 86_400), b=st.integers(0, 30 * 86_400), limit=st.integers(0, 10**12))
def test_allowance_grows_with_time(a: int, b: int, limit: int) -> None:
    """The allowance never shrinks as the period passes."""
    early, late = sorted((a, b))
    first = pace_allowance_mc(CFG, limit, JUNE, JULY, JUNE + timedelta(seconds=early))
    assert first <= pace_allowance_mc(CFG, limit, JUNE, JULY, JUNE + timedelta(seconds=late))


@pytest.mark.parametrize(("day", "spent_share_pct", "over"), [
    (15, 40, False),  # behind the straight line
    (15, 58, False),  # ahead of it, within slack and burst
    (15, 70, True),
    (1, 5, False),  # the burst lets the first day spend a little
    (1, 10, True),
])
def test_calls_over_pace_are_refused(day: int, spent_share_pct: int, over: bool) -> None:
    """A call that takes settled + reserved + ceiling past the allowance is refused with pace_exceeded."""
    now = JUNE + timedelta(days=day - 1, hours=12)
    settled = LIMIT * spent_share_pct // 100
    verdict = check_pace(CFG, [account(settled)], 1_000, now)
    assert (verdict is not None) is over
    assert (settled + 1_000 > expected_allowance(CFG, LIMIT, now)) is over


def test_refusal_carries_the_numbers_and_waiting_exactly_retry_after_helps() -> None:
    """pace_exceeded names the budget, allowance and spend; after retry_after_s the same call fits."""
    now = JUNE + timedelta(days=3)
    acct, ceiling = account(settled=LIMIT // 5, reserved=50_000), 20_000
    verdict = check_pace(CFG, [acct], ceiling, now)
    assert isinstance(verdict, Verdict)
    assert (verdict.code, verdict.rule, verdict.level, verdict.scope) == (Code.PACE_EXCEEDED, Rule.PACING,
                                                                          Level.AGENT, SCOPE)
    assert verdict.evidence["spent_mc"] == acct.settled_mc + acct.reserved_mc
    assert verdict.evidence["allowance_mc"] == expected_allowance(CFG, LIMIT, now)
    assert verdict.retry_after_s is not None and verdict.retry_after_s > 0
    later = now + timedelta(seconds=verdict.retry_after_s)
    assert check_pace(CFG, [acct], ceiling, later) is None
    assert check_pace(CFG, [acct], ceiling, later - timedelta(seconds=1)) is not None


def test_only_configured_periods_are_paced() -> None:
    """Day and total budgets are not paced by the monthly default."""
    daily = Budget(level=Level.AGENT, scope=SCOPE, limit_mc=LIMIT, period=Period.DAY)
    total = Budget(level=Level.AGENT, scope=SCOPE, limit_mc=LIMIT)
    assert check_pace(CFG, [account(LIMIT, budget=daily), account(LIMIT, budget=total)], 1, JUNE) is None
    assert check_pace(PacingConfig(periods=(Period.DAY,)), [account(LIMIT, budget=daily)], 1, JUNE) is not None


CEILINGS = {"gpt-5": 900_000, "deepseek": 60_000, "llama-8b": 1_000}
ROUTE = Route("gpt-5", "gpt-5", RouteReason.ALLOWED, "allowed")


def test_downgrade_picks_the_first_cheaper_model_that_fits() -> None:
    """Over pace with action downgrade, the call moves to the priciest cheaper model on pace."""
    now = JUNE + timedelta(days=1)
    acct = account(settled=expected_allowance(CFG, LIMIT, now) - 100_000)
    config = PacingConfig(action=PaceAction.DOWNGRADE)
    routed = apply_pacing(config, [acct], ROUTE, ceilings_mc=CEILINGS, downgrades=["deepseek", "llama-8b"], now=now)
    assert isinstance(routed, Route)
    assert (routed.model, routed.requested_model, routed.reason) == ("deepseek", "gpt-5",
                                                                     RouteReason.PACING_DOWNGRADE)
    assert "over pace" in routed.detail


def test_downgrade_with_nothing_that_fits_refuses() -> None:
    """When no cheaper model fits the pace either, the call is refused (no_cheaper_model_fits)."""
    now = JUNE + timedelta(days=1)
    acct = account(settled=expected_allowance(CFG, LIMIT, now))
    config = PacingConfig(action=PaceAction.DOWNGRADE)
    verdict = apply_pacing(config, [acct], ROUTE, ceilings_mc=CEILINGS, downgrades=["deepseek"], now=now)
    assert isinstance(verdict, Verdict) and verdict.detector == "no_cheaper_model_fits"


def test_on_pace_keeps_the_route_and_refuse_mode_refuses() -> None:
    """On pace the route is unchanged; over pace in refuse mode the verdict comes back."""
    now = JUNE + timedelta(days=15)
    assert apply_pacing(CFG, [account(0)], ROUTE, ceilings_mc=CEILINGS, downgrades=[], now=now) is ROUTE
    over = apply_pacing(CFG, [account(LIMIT)], ROUTE, ceilings_mc=CEILINGS, downgrades=["deepseek"], now=now)
    assert isinstance(over, Verdict) and over.detector == "over_pace"


def test_the_period_comes_from_the_budgets_calendar() -> None:
    """Pacing uses period_bounds, so a June budget's period is June 1 to July 1."""
    assert period_bounds(Period.MONTH, "UTC", JUNE + timedelta(days=3)) == (JUNE, JULY)


@pytest.mark.parametrize(("changes", "words"), [
    ({"slack_pct": -1}, "slack_pct"),
    ({"burst_pct": 101}, "burst_pct"),
    ({"periods": (Period.TOTAL,)}, "no elapsed fraction"),
    ({"periods": ()}, "periods"),
    ({"action": "explode"}, "refuse, downgrade"),
])
def test_invalid_pacing_is_a_clear_error(changes: dict[str, object], words: str) -> None:
    """Out-of-range percentages, total budgets or unknown actions raise a naming error."""
    with pytest.raises(DefenseConfigError, match=words):
        PacingConfig(**changes)  # type: ignore[arg-type]


ZONES = ("UTC", "Europe/Berlin", "America/Sao_Paulo", "Australia/Lord_Howe", "Asia/Kathmandu", "America/Havana")


@given(zone=st.sampled_from(ZONES), period=st.sampled_from((Period.DAY, Period.WEEK, Period.MONTH)),
       offsets=st.lists(st.integers(0, 4 * 366 * 86_400 * 1_000_000), min_size=1, max_size=40))
def test_paced_period_is_the_budget_period_of_each_instant(zone: str, period: Period, offsets: list[int]) -> None:
    """The period pacing reads (remembered from the previous call) is period_bounds' for every instant,
    in any order, across DST changes (Havana and Sao Paulo changed clocks at midnight)."""
    budget = Budget(level=Level.AGENT, scope=SCOPE, limit_mc=LIMIT, period=period, timezone=zone)
    config = PacingConfig(periods=(period,))
    start = datetime(2008, 1, 1, tzinfo=UTC)
    for offset in sorted(offsets) + offsets:
        now = start + timedelta(microseconds=offset)
        reading = read_pace(config, account(0, budget=budget), 1, now)
        assert reading is not None
        assert (reading.start, reading.end) == period_bounds(period, zone, now)


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), period=st.sampled_from((Period.DAY, Period.WEEK, Period.MONTH)),
       slack=st.integers(0, 1_000), burst=st.integers(0, 100),
       calls=st.lists(st.tuples(st.integers(0, 3 * 366 * 86_400 * 1_000_000), st.integers(0, 2 * LIMIT),
                                st.integers(0, LIMIT), st.integers(0, LIMIT // 10)), min_size=1, max_size=30))
def test_the_pace_check_on_epoch_microseconds_is_the_readings(zone: str, period: Period, slack: int, burst: int,
                                                              calls: list[tuple[int, int, int, int]]) -> None:
    """check_pace (allowances on microseconds since the epoch, periods remembered) refuses exactly the calls whose
    read_pace reading is over, in any order of instants, in any zone."""
    budget = Budget(level=Level.AGENT, scope=SCOPE, limit_mc=LIMIT, period=period, timezone=zone)
    config = PacingConfig(slack_pct=slack, burst_pct=burst, periods=(period,))
    start = datetime(2008, 1, 1, tzinfo=UTC)
    for offset, settled, reserved, ceiling in calls:
        now = start + timedelta(microseconds=offset)
        view = account(settled, reserved, budget=budget)
        reading = read_pace(config, view, ceiling, now)
        assert reading is not None
        assert reading.allowance_mc == pace_allowance_mc(config, LIMIT, reading.start, reading.end, now)
        assert (check_pace(config, [view], ceiling, now) is not None) == reading.over


@settings(max_examples=300, deadline=None)
@given(action=st.sampled_from(tuple(PaceAction)), day=st.integers(0, 29), settled=st.integers(0, LIMIT),
       ceilings=st.lists(st.integers(0, LIMIT // 2), min_size=1, max_size=3))
def test_apply_pacing_keeps_an_on_pace_route_and_refuses_as_check_pace(action: PaceAction, day: int, settled: int,
                                                                        ceilings: list[int]) -> None:
    """The admit guard asks check_pace first: None means apply_pacing keeps the route; in refuse mode its verdict
    is apply_pacing's."""
    config = PacingConfig(action=action)
    now = JUNE + timedelta(days=day, hours=7)
    models = [f"m{i}" for i in range(len(ceilings))]
    route = Route(models[0], models[0], RouteReason.ALLOWED, "allowed")
    accounts = [account(settled)]
    checked = check_pace(config, accounts, ceilings[0], now)
    applied = apply_pacing(config, accounts, route, ceilings_mc=dict(zip(models, ceilings, strict=True)),
                           downgrades=models[1:], now=now)
    if checked is None:
        assert applied is route
    elif action is PaceAction.REFUSE:
        assert applied == checked
    else:
        assert applied is not route
