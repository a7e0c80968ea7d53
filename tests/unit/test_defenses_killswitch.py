"""Layer 3: the kill switch, manual and automatic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.codes import Code
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.killswitch import (
    KillMode,
    KillSwitchConfig,
    KillSwitchState,
    check_kill_switch,
    record_spend,
    reset,
    trip,
)
from comptroller.domain.defenses.verdict import Rule
from comptroller.domain.scopes import Level

T0 = datetime(2024, 6, 1, tzinfo=UTC)
NS = KillSwitchState(level=Level.NAMESPACE, scope="acme")


def test_a_manual_trip_refuses_every_call_until_an_admin_resets() -> None:
    """Tripped by hand, the switch refuses with kill_switch; after a reset calls pass again."""
    step = trip(NS, T0, by="ops@acme", reason="suspicious spend")
    verdict = check_kill_switch([step.state])
    assert verdict is not None
    assert (verdict.code, verdict.rule, verdict.detector, verdict.level, verdict.scope) == (
        Code.KILL_SWITCH, Rule.KILL_SWITCH, "manual", Level.NAMESPACE, "acme")
    assert verdict.retry_after_s is None  # waiting never helps
    assert [(e.kind, e.code) for e in step.events] == [("kill_switch", "tripped")]
    cleared = reset(step.state, T0 + timedelta(hours=1), by="ops@acme")
    assert check_kill_switch([cleared.state]) is None
    assert [e.code for e in cleared.events] == ["reset"]


def test_tripping_twice_keeps_the_first_cause_and_resetting_idle_changes_nothing() -> None:
    """Trip and reset are idempotent: repeats change no state and emit no event."""
    first = trip(NS, T0, by="a", reason="one").state
    assert trip(first, T0, by="b", reason="two").state is first
    assert reset(NS, T0, by="a").state is NS


def test_aggregate_window_spend_above_the_threshold_trips_it() -> None:
    """Settles adding up past window_spend_mc_max within one aligned window trip it automatically."""
    config = KillSwitchConfig(window_s=3_600, window_spend_mc_max=1_000_000)
    cost = 300_000
    state, trips_at = NS, None
    for k in range(10):
        step = record_spend(state, config, cost, T0 + timedelta(minutes=k))
        state = step.state
        if step.events and trips_at is None:
            trips_at = k
    assert trips_at == config.window_spend_mc_max // cost  # the settle taking the sum strictly over
    assert state.mode is KillMode.WINDOW_SPEND and state.by == "automatic"


def test_spend_spread_over_windows_does_not_trip() -> None:
    """The same spend spread across windows stays under the per-window threshold."""
    config = KillSwitchConfig(window_s=60, window_spend_mc_max=1_000)
    state = NS
    for k in range(100):
        state = record_spend(state, config, config.window_spend_mc_max, T0 + timedelta(seconds=60 * k)).state
    assert not state.tripped


@pytest.mark.parametrize(("settled", "limit", "pct", "trips"), [
    (90_000, 100_000, 90, False),  # exactly the fraction is not above it
    (90_001, 100_000, 90, True),
    (50, 0, 90, False),  # a zero limit has no fraction
])
def test_a_fraction_of_the_namespace_budget_trips_it(settled: int, limit: int, pct: int, trips: bool) -> None:
    """Settled spend above budget_pct_max percent of the namespace budget trips the switch."""
    config = KillSwitchConfig(budget_pct_max=pct)
    step = record_spend(NS, config, 1, T0, budget_settled_mc=settled, budget_limit_mc=limit)
    assert step.state.tripped is trips
    if trips:
        assert step.state.mode is KillMode.BUDGET_FRACTION


def test_the_broadest_tripped_switch_answers() -> None:
    """With a namespace and an agent switch tripped, the namespace one is reported."""
    agent = trip(KillSwitchState(level=Level.AGENT, scope="acme|t|a"), T0, by="a", reason="r").state
    ns = trip(NS, T0, by="b", reason="r").state
    verdict = check_kill_switch([agent, ns])
    assert verdict is not None and verdict.level is Level.NAMESPACE


@pytest.mark.parametrize(("changes", "words"), [
    ({"window_s": 0}, "window_s"),
    ({"window_spend_mc_max": 0}, "window_spend_mc_max"),
    ({"budget_pct_max": 0}, "budget_pct_max"),
    ({"budget_pct_max": 101}, "budget_pct_max"),
])
def test_invalid_thresholds_are_clear_errors(changes: dict[str, int], words: str) -> None:
    """A zero window or an out-of-range threshold raises DefenseConfigError naming it."""
    with pytest.raises(DefenseConfigError, match=words):
        KillSwitchConfig(**changes)


@pytest.mark.parametrize(("call", "error"), [
    (lambda: record_spend(NS, KillSwitchConfig(), -1, T0), ValueError),
    (lambda: record_spend(NS, KillSwitchConfig(), 1, T0, budget_settled_mc=1), ValueError),
    (lambda: trip(NS, T0, by="", reason="r"), DefenseConfigError),
    (lambda: KillSwitchState(level="galaxy", scope="x"), DefenseConfigError),  # type: ignore[arg-type]
])
def test_bad_input_raises(call: object, error: type[Exception]) -> None:
    """Negative costs, half a budget reading, an anonymous trip or an unknown level are errors."""
    with pytest.raises(error):
        call()  # type: ignore[operator]


@given(costs=st.lists(st.integers(0, 10_000), max_size=30), gaps=st.integers(0, 4_000))
def test_records_round_trip(costs: list[int], gaps: int) -> None:
    """Every state reached survives to_record / from_record unchanged."""
    config = KillSwitchConfig(window_spend_mc_max=50_000)
    state = NS
    for k, cost in enumerate(costs):
        state = record_spend(state, config, cost, T0 + timedelta(seconds=k * gaps)).state
        assert KillSwitchState.from_record(state.to_record()) == state
