"""Shared-cost allocation by largest remainder: shares sum exactly to the cost, in proportion to use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.budgets import Period
from comptroller.domain.wallets.allocation import AllocationBasis, InfraItem, Use, allocate, allocate_item

WEIGHTS = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.integers(0, 10**9), min_size=1,
                          max_size=12).filter(lambda w: any(w.values()))


@given(st.integers(0, 10**12), WEIGHTS)
def test_shares_sum_to_cost(cost_mc: int, weights: dict[str, int]) -> None:
    """The shares sum exactly to the cost, and each is within one millicent of its exact proportion."""
    shares = allocate(cost_mc, weights)
    assert sum(shares.values()) == cost_mc
    total = sum(weights.values())
    for key, share in shares.items():
        exact = Fraction(cost_mc * weights[key], total)
        assert exact - 1 < share < exact + 1
    assert set(shares) == {k for k, w in weights.items() if w > 0}


@given(st.integers(0, 10**9), WEIGHTS)
def test_larger_weight_never_gets_less(cost_mc: int, weights: dict[str, int]) -> None:
    """A target that used more never gets a smaller share (largest remainder is monotone within one split)."""
    shares = allocate(cost_mc, weights)
    for a in shares:
        for b in shares:
            if weights[a] > weights[b]:
                assert shares[a] >= shares[b]


def test_three_way_split_of_a_vps() -> None:
    """$25 split equally three ways: 833,334 + 833,333 + 833,333 mc, the extra mc to the first name."""
    shares = allocate(2_500_000, {"b": 1, "a": 1, "c": 1})
    assert shares == {"a": 2_500_000 // 3 + 1, "b": 2_500_000 // 3, "c": 2_500_000 // 3}


def test_no_weight_cannot_carry_a_cost() -> None:
    """A cost with nobody to carry it is an error, not a silent loss."""
    with pytest.raises(ValueError, match="no target"):
        allocate(10, {"a": 0})


def test_item_is_allocated_per_period_with_use() -> None:
    """A daily GPU item charges each day with use its full cost, split by tokens; days without use stay idle."""
    gpu = InfraItem(name="gpu", cost_mc=346_000, period=Period.DAY)
    day = datetime(2026, 3, 1, 12, tzinfo=UTC)
    uses = [Use(day, "agent:a", 300), Use(day, "agent:b", 100), Use(day + timedelta(days=2), "agent:b", 5)]
    out = allocate_item(gpu, uses)
    assert out == {"2026-03-01": {"agent:a": 346_000 * 3 // 4, "agent:b": 346_000 // 4},
                   "2026-03-03": {"agent:b": 346_000}}


def test_calls_basis_counts_calls() -> None:
    """With the calls basis each call weighs one, whatever its tokens."""
    vps = InfraItem(name="vps", cost_mc=2_500_000, period=Period.MONTH, basis=AllocationBasis.CALLS)
    at = datetime(2026, 3, 5, tzinfo=UTC)
    out = allocate_item(vps, [Use(at, "agent:a", 10**6), Use(at, "agent:b", 1)])
    assert out == {"2026-03-01": {"agent:a": 1_250_000, "agent:b": 1_250_000}}


@pytest.mark.parametrize("bad", [{"cost_mc": 0}, {"period": Period.TOTAL}, {"name": ""}])
def test_bad_item_is_refused(bad: dict[str, object]) -> None:
    """An item without a cost, a name or a calendar period is an error."""
    fields: dict[str, object] = {"name": "gpu", "cost_mc": 1, "period": Period.DAY, **bad}
    with pytest.raises(ValueError, match="infra"):
        InfraItem(**fields)  # type: ignore[arg-type]
