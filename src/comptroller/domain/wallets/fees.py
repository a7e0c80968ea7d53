"""Service fees: what a customer tenant pays an agent for a call and for a task.

The fee of one call is ``max(base_fee_mc, ceil(cost_mc x (1 + margin)))`` [KinthAI, "Your AI
Agent Needs a Wallet"]: at least the base fee, and above the crossover cost
``base_fee_mc / (1 + margin)`` the cost plus the margin. The product is computed exactly
in integers (the margin is an exact decimal, read as a fraction) and rounds **up**: a fee
never falls short of cost plus margin by a fraction of a millicent. A task fee is a flat
amount per task an agent works on.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

__all__ = ["FeeSchedule", "crossover_cost_mc", "platform_take_mc", "service_fee_mc"]


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """A policy's ``[fees]`` table.

    Attributes:
        base_fee_mc: the least a call is charged, millicents (>= 0).
        margin: the markup on cost, an exact decimal >= 0 (``0.25``: cost + 25 %).
        task_fee_mc: a flat fee per task an agent works on, millicents (>= 0; 0: none).
        margin_floor: agents whose margin (profit / revenue) is below this are flagged by
            ``comptroller pnl`` (a decimal fraction; None: nobody is flagged).
        platform_share: the part of each fee the platform keeps (0 <= share <= 1; the agent pays it
            to ``platform:revenue``; :func:`platform_take_mc` rounds it down).
    """

    base_fee_mc: int = 0
    margin: Decimal = Decimal(0)
    task_fee_mc: int = 0
    margin_floor: Decimal | None = None
    platform_share: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.base_fee_mc < 0 or self.task_fee_mc < 0:
            raise ValueError(f"fees must be >= 0 mc, got base_fee_mc={self.base_fee_mc}, "
                             f"task_fee_mc={self.task_fee_mc}")
        if not self.margin.is_finite() or self.margin < 0:
            raise ValueError(f"fees.margin must be a finite decimal >= 0 such as \"0.25\", got {self.margin}")
        if not self.platform_share.is_finite() or not 0 <= self.platform_share <= 1:
            raise ValueError(f"fees.platform_share must be a decimal from 0 to 1 such as \"0.10\", "
                             f"got {self.platform_share}")


def service_fee_mc(cost_mc: int, schedule: FeeSchedule) -> int:
    """The fee of one call: ``max(base_fee_mc, ceil(cost_mc * (1 + margin)))`` millicents.

    Args:
        cost_mc: the call's settled cost, millicents (>= 0).
        schedule: the fee schedule.

    Raises:
        ValueError: on a negative cost.
    """
    if cost_mc < 0:
        raise ValueError(f"cost_mc must be >= 0, got {cost_mc}")
    factor = 1 + Fraction(schedule.margin)
    marked_up = -(-(cost_mc * factor.numerator) // factor.denominator)  # ceil, exact
    return max(schedule.base_fee_mc, marked_up)


def crossover_cost_mc(schedule: FeeSchedule) -> int:
    """The largest cost whose fee is the base fee: ``floor(base_fee_mc / (1 + margin))`` millicents."""
    factor = 1 + Fraction(schedule.margin)
    return schedule.base_fee_mc * factor.denominator // factor.numerator


def platform_take_mc(fee_mc: int, schedule: FeeSchedule) -> int:
    """The platform's part of a fee: ``floor(fee_mc * platform_share)`` millicents (the agent keeps the fraction)."""
    share = Fraction(schedule.platform_share)
    return fee_mc * share.numerator // share.denominator
