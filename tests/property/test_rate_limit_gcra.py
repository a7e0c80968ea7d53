"""GCRA arithmetic (hypothesis): never more than the limit plus the elapsed time's share, a burst of exactly the
limit from idle, a refused call conforms exactly when its Retry-After has passed, refunds stay within bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.rate_limits import Gcra, LimitLevel, RateLimit, RateUnit, conform, refund

T0_NS = 1_700_000_000 * 1_000_000_000
limits = st.integers(min_value=1, max_value=120).map(lambda n: RateLimit(RateUnit.TPM, LimitLevel.KEY, "k", n))
steps = st.lists(st.tuples(st.integers(min_value=0, max_value=20_000_000_000), st.integers(min_value=1, max_value=150)),
                 max_size=60)


@given(limits, steps)
def test_admitted_units_in_any_interval_are_bounded(limit: RateLimit, calls: list[tuple[int, int]]) -> None:
    """For admitted calls at times a <= b: units x T <= (b - a) + limit x T (the leaky bucket's bound)."""
    state, now, admitted = Gcra(), T0_NS, []
    for dt, units in calls:
        now += dt
        state, wait = conform(state, limit, units, now)
        if wait is None:
            admitted.append((now, units))
    for i, (a, _) in enumerate(admitted):
        total = 0
        for b, units in admitted[i:]:
            total += units
            assert total * limit.interval_ns <= (b - a) + limit.limit * limit.interval_ns


@given(limits)
def test_from_idle_exactly_the_limit_passes_at_once(limit: RateLimit) -> None:
    """``limit`` calls of one unit at the same instant pass; the next one waits exactly one interval."""
    state = Gcra()
    for _ in range(limit.limit):
        state, wait = conform(state, limit, 1, T0_NS)
        assert wait is None
    _, wait = conform(state, limit, 1, T0_NS)
    assert wait == limit.interval_ns


@given(limits, steps, st.integers(min_value=1, max_value=150))
def test_a_refused_call_conforms_exactly_after_its_wait(limit: RateLimit, calls: list[tuple[int, int]],
                                                        units: int) -> None:
    """After a refusal with wait w (and no other call), the same call conforms at now + w and not at now + w - 1."""
    state, now = Gcra(), T0_NS
    for dt, u in calls:
        now += dt
        state, _ = conform(state, limit, u, now)
    after, wait = conform(state, limit, units, now)
    if wait is None:
        return
    assert after == state  # a refusal changes nothing
    if units > limit.limit:
        assert wait == -1
        return
    assert conform(state, limit, units, now + wait - 1)[1] is not None
    assert conform(state, limit, units, now + wait)[1] is None


@given(limits, st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**6),
       st.integers(min_value=-10**12, max_value=10**12))
def test_a_refund_never_moves_tat_below_now_or_up(limit: RateLimit, tat: int, units: int, offset: int) -> None:
    """Handing tokens back lowers TAT by units x T at most, never below now, never raises it."""
    now = T0_NS + offset
    before = Gcra(T0_NS + tat, 3)
    after = refund(before, limit, units, now)
    assert after.tat_ns <= before.tat_ns
    assert after.tat_ns >= min(before.tat_ns, now)
    assert before.tat_ns - after.tat_ns <= units * limit.interval_ns
