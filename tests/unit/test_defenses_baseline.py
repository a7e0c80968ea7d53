"""The trailing spend baseline and the relative spend-rate breaker that reads it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.breaker import BreakerConfig, BreakerState, BreakerStatus, admit, record_spend
from comptroller.domain.defenses.baseline import NamespaceRate, SpendBaseline
from comptroller.domain.scopes import Level

T0 = datetime(2025, 1, 6, 0, 0, tzinfo=UTC)
CFG = BreakerConfig()
HOUR = timedelta(seconds=CFG.relative_window_s)


def _fed(per_window_mc: int, windows: int, config: BreakerConfig = CFG, start: datetime = T0) -> SpendBaseline:
    base = SpendBaseline()
    for w in range(windows):
        base = base.add(per_window_mc, start + w * HOUR, window_s=config.relative_window_s,
                        half_life_s=config.baseline_half_life_s)
    return base


@given(st.integers(100, 10_000_000))  # below 100 mc the 1/1,000 mc rounding shows
def test_a_steady_spend_becomes_the_baseline(per_window_mc: int) -> None:
    """After two weeks of one steady spend per window, the baseline is that spend (within 1 %)."""
    assert _fed(per_window_mc, 14 * 24).baseline_mc() == pytest.approx(per_window_mc, rel=0.01)


def test_empty_windows_decay_the_baseline_by_the_half_life() -> None:
    """A day of empty windows halves the baseline (half-life one day), folded in one step."""
    base = _fed(100_000, 14 * 24)
    day_later = base.add(0, T0 + (14 * 24 + 24) * HOUR, window_s=CFG.relative_window_s,
                         half_life_s=CFG.baseline_half_life_s)
    # the last counted window folds in, then the 24 empty windows between it and the new one
    decay = 0.5 ** (CFG.relative_window_s / CFG.baseline_half_life_s)
    expected = (base.baseline_mc() * decay + base.window_spend_mc * (1 - decay)) * decay ** 24
    assert day_later.baseline_mc() == pytest.approx(expected, rel=1e-6)


def test_baselines_round_trip_through_records() -> None:
    """A namespace rate and a breaker with a baseline read back equal."""
    rate = NamespaceRate("ns", _fed(5_000, 30), version=3)
    assert NamespaceRate.from_record(rate.to_record()) == rate
    state = BreakerState(Level.AGENT, "ns|t|a", rel=_fed(5_000, 30), rel_over_streak=2, rel_last_over_index=7)
    assert BreakerState.from_record(state.to_record()) == state


def _run(state: BreakerState, per_window_mc: int, windows: int, start: datetime,
         fallback: SpendBaseline | None = None) -> tuple[BreakerState, int | None]:
    """Spend ``per_window_mc`` in each of ``windows`` hours (as 6 settles); the window index it opened in."""
    for w in range(windows):
        for k in range(6):
            at = start + w * HOUR + timedelta(minutes=10 * k)
            state = record_spend(state, CFG, per_window_mc // 6, at, fallback=fallback).state
            if state.status is BreakerStatus.OPEN:
                return state, w
    return state, None


def test_k_times_the_own_baseline_above_the_floor_for_trip_windows_opens_it() -> None:
    """An agent with a $1.20/h week spending 20x that opens in the trip_windows-th hour, refusing with
    relative_rate; at 2x it stays closed."""
    week = 7 * 24
    state, _ = _run(BreakerState(Level.AGENT, "ns|t|a"), 120_000, week, T0)
    assert state.status is BreakerStatus.CLOSED
    opened, window = _run(state, 20 * 120_000, 5, T0 + week * HOUR)
    assert window == CFG.trip_windows - 1
    verdict = admit(opened, CFG, "next", T0 + (week + window) * HOUR + timedelta(minutes=55)).verdict
    assert verdict is not None and verdict.detector == "relative_rate"
    calm, never = _run(state, 2 * 120_000, 24, T0 + week * HOUR)
    assert never is None and calm.status is BreakerStatus.CLOSED


def test_a_young_scope_uses_the_namespace_baseline_only_when_that_is_old_enough() -> None:
    """A new agent at 20x a mature namespace baseline opens; against a young namespace it does not."""
    start = T0 + 7 * 24 * HOUR
    mature, young = _fed(120_000, 7 * 24), _fed(120_000, 3, start=start - 3 * HOUR)
    _, window = _run(BreakerState(Level.AGENT, "ns|t|new"), 20 * 120_000, 5, start, fallback=mature)
    assert window == CFG.trip_windows - 1
    _, never = _run(BreakerState(Level.AGENT, "ns|t|new"), 20 * 120_000, 5, start, fallback=young)
    assert never is None


def test_spend_under_the_floor_never_trips_the_relative_breaker() -> None:
    """However many times its baseline, a scope spending at most the floor per window stays closed."""
    state, _ = _run(BreakerState(Level.AGENT, "ns|t|a"), 600, 7 * 24, T0)
    _, never = _run(state, CFG.relative_floor_mc, 24, T0 + 7 * 24 * HOUR)
    assert never is None


def test_relative_trips_can_be_switched_off() -> None:
    """relative_k = None: only the fixed threshold judges."""
    config = BreakerConfig(relative_k=None)
    state = BreakerState(Level.AGENT, "ns|t|a")
    for w in range(7 * 24 + 5):
        state = record_spend(state, config, 1_000 if w < 7 * 24 else 40_000, T0 + w * HOUR).state
    assert state.status is BreakerStatus.CLOSED and state.rel == SpendBaseline()
