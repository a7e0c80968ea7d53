"""Fan-out cap: at most max_in_flight live calls per capped scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.codes import Code
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.fanout import FanOutConfig, InFlight, admit_in_flight, end_in_flight
from comptroller.domain.scopes import Level

T0 = datetime(2025, 1, 6, 9, tzinfo=UTC)
TTL_S = 60.0


def test_the_call_past_the_cap_is_refused_until_one_ends() -> None:
    """max_in_flight calls are admitted, the next is refused (fan_out_exceeded); ending one admits it."""
    cap, state = 9, InFlight(Level.TASK, "ns|t")
    for i in range(cap):
        step = admit_in_flight(state, cap, f"c{i}", TTL_S, T0)
        assert step.verdict is None
        state = step.state
    refused = admit_in_flight(state, cap, "extra", TTL_S, T0)
    assert refused.verdict is not None and refused.verdict.code is Code.FAN_OUT_EXCEEDED
    assert refused.verdict.evidence["in_flight"] == cap and refused.state is state
    state = end_in_flight(state, "c3", T0).state
    assert admit_in_flight(state, cap, "extra", TTL_S, T0).verdict is None


def test_admitting_a_live_call_again_is_idempotent() -> None:
    """A retried admission of a call in flight changes nothing and is not refused."""
    state = admit_in_flight(InFlight(Level.TASK, "t"), 1, "c1", TTL_S, T0).state
    step = admit_in_flight(state, 1, "c1", TTL_S, T0)
    assert step.verdict is None and step.state is state


def test_an_expired_lease_ages_out() -> None:
    """A crashed caller's call stops counting when its lease expires."""
    state = admit_in_flight(InFlight(Level.TASK, "t"), 1, "crashed", TTL_S, T0).state
    assert admit_in_flight(state, 1, "next", TTL_S, T0 + timedelta(seconds=TTL_S - 1)).verdict is not None
    assert admit_in_flight(state, 1, "next", TTL_S, T0 + timedelta(seconds=TTL_S)).verdict is None


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=80), st.integers(1, 12))
def test_never_more_than_the_cap_in_flight(ops: list[tuple[bool, int]], cap: int) -> None:
    """Whatever order calls start and end in, the live set never exceeds the cap and matches a model."""
    state, model = InFlight(Level.TASK, "t"), set()
    for start, n in ops:
        call = f"c{n}"
        if start:
            step = admit_in_flight(state, cap, call, TTL_S, T0)
            if step.verdict is None:
                model.add(call)
            else:
                assert len(model) >= cap
        else:
            step = end_in_flight(state, call, T0)
            model.discard(call)
        state = step.state
        assert {c for c, _ in state.live} == model and len(model) <= cap
    assert InFlight.from_record(state.to_record()) == state


@pytest.mark.parametrize("caps", [{Level.TENANT: 3}, {Level.TASK: 0}])
def test_bad_caps_are_clear_errors(caps: dict[Level, int]) -> None:
    """Only agent, conversation and task are capped, each at least 1."""
    with pytest.raises(DefenseConfigError, match="fan_out"):
        FanOutConfig(max_in_flight=caps)
