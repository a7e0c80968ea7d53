"""The service fee formula: max(base fee, cost x (1 + margin)), rounded up, with its crossover."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.wallets.fees import FeeSchedule, crossover_cost_mc, service_fee_mc

SCHEDULES = [FeeSchedule(base_fee_mc=1_000, margin=Decimal("0.25")),
             FeeSchedule(base_fee_mc=0, margin=Decimal("0.3")),
             FeeSchedule(base_fee_mc=5_000, margin=Decimal("0")),
             FeeSchedule(base_fee_mc=777, margin=Decimal("1.125"))]


def _reference(cost_mc: int, schedule: FeeSchedule) -> int:
    """The fee by Decimal arithmetic at high precision (another route than the code's fractions)."""
    marked = (Decimal(cost_mc) * (1 + schedule.margin)).to_integral_value(rounding=ROUND_CEILING)
    return max(schedule.base_fee_mc, int(marked))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("cost_mc", [0, 1, 3, 799, 800, 801, 1_000, 123_457, 10**12])
def test_fee_table(schedule: FeeSchedule, cost_mc: int) -> None:
    """The fee is the base fee or the cost with its margin rounded up, whichever is larger."""
    assert service_fee_mc(cost_mc, schedule) == _reference(cost_mc, schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_crossover(schedule: FeeSchedule) -> None:
    """At the crossover cost the fee is still the base fee; one millicent more and the margin decides."""
    c = crossover_cost_mc(schedule)
    assert service_fee_mc(c, schedule) == schedule.base_fee_mc
    above = service_fee_mc(c + 1, schedule)
    assert above > schedule.base_fee_mc
    assert above == _reference(c + 1, schedule)


def test_margin_rounds_up() -> None:
    """A fractional millicent of margin is charged as a whole one: 1 mc at 25 % is 2 mc, not 1."""
    schedule = FeeSchedule(base_fee_mc=0, margin=Decimal("0.25"))
    assert service_fee_mc(1, schedule) == 2
    assert service_fee_mc(4, schedule) == 5


@given(st.integers(0, 10**15), st.integers(0, 10**7), st.decimals(0, 10, places=4))
def test_fee_never_below_cost_plus_margin(cost_mc: int, base_mc: int, margin: Decimal) -> None:
    """The fee covers the base fee and cost x (1 + margin), and exceeds the latter by < 1 mc unless base wins."""
    schedule = FeeSchedule(base_fee_mc=base_mc, margin=margin)
    fee = service_fee_mc(cost_mc, schedule)
    exact = Decimal(cost_mc) * (1 + margin)
    assert fee >= base_mc and fee >= exact
    assert fee == base_mc or fee - exact < 1


@pytest.mark.parametrize("bad", [{"base_fee_mc": -1}, {"task_fee_mc": -5}, {"margin": Decimal("-0.1")},
                                 {"margin": Decimal("NaN")}, {"platform_share": Decimal("1.5")}])
def test_bad_schedule_is_refused(bad: dict[str, object]) -> None:
    """A negative fee or margin, or a NaN margin, is an error naming the field."""
    with pytest.raises(ValueError, match=r"fee|margin|platform_share"):
        FeeSchedule(**bad)  # type: ignore[arg-type]
