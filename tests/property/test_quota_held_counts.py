"""Held counts (the quota and wallet-floor arithmetic), against a plain reference model (hypothesis).

Random reserves (admitted only when they fit), settles at most the ceiling, releases and
clock moves: at every step ``settled + held <= limit``, and the count equals the reference's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain import held_counts
from comptroller.domain.held_counts import HeldCount

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TTL_S = 30
ops = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 9), st.integers(0, 50)),
    st.tuples(st.just("settle"), st.integers(0, 9), st.integers(0, 100)),
    st.tuples(st.just("release"), st.integers(0, 9), st.just(0)),
    st.tuples(st.just("wait"), st.just(0), st.integers(1, 40)),
), max_size=80)


@given(st.integers(0, 200), ops)
def test_settled_plus_held_never_exceeds_the_limit_and_matches_the_reference(limit: int,
                                                                            steps: list[tuple[str, int, int]]) -> None:
    """Reserve-if-fits / settle / release / expire keep settled + held <= limit and equal the reference model."""
    count, now = HeldCount(), T0
    holds: dict[str, tuple[int, datetime]] = {}   # reference: id -> (amount, expiry)
    charged: dict[str, int] = {}                   # reference: expired holds charged at their ceiling
    settled = 0
    for op, n, amount in steps:
        call = f"c{n}"
        for cid, (a, exp) in list(holds.items()):  # the reference ages like the ledger's lease sweep
            if exp <= now:
                del holds[cid]
                charged[cid], settled = a, settled + a
        count = held_counts.age(count, now)
        if op == "reserve" and call not in holds and call not in charged:
            if held_counts.fits(count, amount, limit):
                count = held_counts.reserve(count, call, amount, now + timedelta(seconds=TTL_S))
                holds[call] = (amount, now + timedelta(seconds=TTL_S))
        elif op == "settle" and (call in holds or call in charged):
            ceiling = holds[call][0] if call in holds else charged[call]
            actual = min(amount, ceiling)
            count = held_counts.settle(count, call, actual)
            settled += actual - charged.pop(call, 0)
            holds.pop(call, None)
        elif op == "release":
            count = held_counts.release(count, call)
            settled -= charged.pop(call, 0)
            holds.pop(call, None)
        elif op == "wait":
            now += timedelta(seconds=amount)
        assert count.settled + count.held <= limit
        assert (count.settled, count.held) == (settled, sum(a for a, _ in holds.values()))


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_a_record_round_trips(settled: int, amount: int) -> None:
    """A count written as a state record reads back equal."""
    count = held_counts.reserve(HeldCount(settled), "c", amount, T0)
    assert HeldCount.from_record(count.to_record(), count.version) == count
