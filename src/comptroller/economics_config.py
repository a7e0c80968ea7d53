"""The policy's ``[fees]`` and ``[[infra]]`` sections: what agents charge and what shared infrastructure costs.

::

    [fees]                        # service fees: the customer tenant pays the agent
    base_fee_usd = "0.002"        # the least a call is charged
    margin = "0.25"               # fee = max(base fee, cost x (1 + margin)), rounded up to the millicent
    task_fee_usd = "0.05"         # per task an agent works on (0: none)
    margin_floor = "0.10"         # comptroller pnl flags agents whose margin / revenue is below this
    platform_share = "0.10"       # the platform keeps 10 % of each fee (platform:revenue), rounded down

    [[infra]]                     # a shared cost, allocated per period in proportion to use
    name = "gpu-node"
    cost_usd = "3.46"
    period = "day"                # day | week | month (calendar, UTC unless timezone = "...")
    basis = "tokens"              # tokens (input + output) | calls
    allocate_to = "agent"         # agent | tenant | conversation

Amounts are USD decimal strings, converted once to millicents rounding **up** (a fee or a
cost never rounds below what was written). Validated when the policy loads: a negative or
non-numeric amount, a ``total`` period or a duplicate item name is an error naming it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from comptroller.domain.budgets import Period
from comptroller.domain.money import parse_usd, usd_to_mc_ceil
from comptroller.domain.wallets.allocation import AllocationBasis, AllocationTarget, InfraItem
from comptroller.domain.wallets.fees import FeeSchedule

__all__ = ["FeesSection", "InfraSpec", "infra_items"]


class FeesSection(BaseModel):
    """``[fees]``: the service-fee schedule (:class:`~comptroller.domain.wallets.fees.FeeSchedule`)."""

    model_config = ConfigDict(extra="forbid")
    base_fee_usd: Any = "0"
    margin: Any = "0"
    task_fee_usd: Any = "0"
    margin_floor: Any = None
    platform_share: Any = "0"

    def schedule(self) -> FeeSchedule:
        """The domain schedule. Raises ValueError naming the field at fault."""
        floor = None if self.margin_floor is None else _signed_decimal(self.margin_floor, "fees.margin_floor")
        return FeeSchedule(base_fee_mc=usd_to_mc_ceil(parse_usd(self.base_fee_usd, "fees.base_fee_usd")),
                           margin=parse_usd(self.margin, "fees.margin"),
                           task_fee_mc=usd_to_mc_ceil(parse_usd(self.task_fee_usd, "fees.task_fee_usd")),
                           margin_floor=floor,
                           platform_share=parse_usd(self.platform_share, "fees.platform_share"))

    @model_validator(mode="after")
    def _valid(self) -> FeesSection:
        self.schedule()
        return self


class InfraSpec(BaseModel):
    """One ``[[infra]]`` item as written (:class:`~comptroller.domain.wallets.allocation.InfraItem`)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    cost_usd: Any
    period: Period
    basis: AllocationBasis = AllocationBasis.TOKENS
    allocate_to: AllocationTarget = AllocationTarget.AGENT
    timezone: str = "UTC"

    def item(self) -> InfraItem:
        """The domain item. Raises ValueError naming the item and field at fault."""
        cost = usd_to_mc_ceil(parse_usd(self.cost_usd, f"infra {self.name!r} cost_usd"))
        return InfraItem(name=self.name, cost_mc=cost, period=self.period, basis=self.basis,
                         target=self.allocate_to, timezone=self.timezone)

    @model_validator(mode="after")
    def _valid(self) -> InfraSpec:
        self.item()
        return self


def infra_items(specs: list[InfraSpec]) -> list[InfraItem]:
    """The domain items of a policy's ``[[infra]]`` list.

    Raises:
        ValueError: when two items share a name (their accounts would merge).
    """
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"[[infra]] names must be unique, {', '.join(map(repr, duplicates))} appear more than once")
    return [s.item() for s in specs]


def _signed_decimal(value: object, field: str) -> Decimal:
    """A finite Decimal that may be negative (a margin floor below zero tolerates losses)."""
    try:
        result = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        raise ValueError(f"{field} must be a decimal such as \"0.10\", got {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"{field} must be finite, got {value!r}")
    return result
