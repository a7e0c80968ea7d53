"""Shared-cost allocation: an ``[[infra]]`` item's cost per period, split in proportion to use.

A shared item (a GPU node at $3.46 a day, a VPS at $25 a month) costs a fixed amount per
calendar period. For each period in which anything used it, that amount is split among
the targets (agents, tenants or conversations) in proportion to their weight in that
period (tokens, or calls) [KinthAI, "Your AI Agent Needs a Wallet"; "Running 6 AI Agents
in Production"]. Shares are whole millicents by the largest-remainder (Hamilton) method:
each target gets the floor of its exact share, and the millicents left over go one each
to the largest remainders (ties: the target named first in sorted order), so the shares
sum exactly to the cost. A period in which nothing used the item is left unallocated
(reported as idle cost).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from comptroller.domain.budgets import Period, period_key

__all__ = ["AllocationBasis", "AllocationTarget", "InfraItem", "Use", "allocate", "allocate_item"]


class AllocationBasis(StrEnum):
    """What an item's cost is shared by."""

    TOKENS = "tokens"
    CALLS = "calls"


class AllocationTarget(StrEnum):
    """Who an item's cost is charged to."""

    AGENT = "agent"
    TENANT = "tenant"
    CONVERSATION = "conversation"


@dataclass(frozen=True, slots=True)
class InfraItem:
    """One ``[[infra]]`` item of a policy.

    Attributes:
        name: the item's id (its account is ``infra:<name>``).
        cost_mc: what it costs per period, millicents (> 0).
        period: the calendar period the cost is per (day, week or month; not total).
        basis: tokens (input + output) or calls.
        target: agents, tenants or conversations.
        timezone: the IANA zone the calendar is read in.
    """

    name: str
    cost_mc: int
    period: Period
    basis: AllocationBasis = AllocationBasis.TOKENS
    target: AllocationTarget = AllocationTarget.AGENT
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an [[infra]] item needs a name")
        if self.cost_mc <= 0:
            raise ValueError(f"[[infra]] {self.name!r}: cost must be > 0 mc, got {self.cost_mc}")
        if self.period is Period.TOTAL:
            raise ValueError(f"[[infra]] {self.name!r}: period must be day, week or month, not total")


@dataclass(frozen=True, slots=True)
class Use:
    """One call's use of shared infrastructure: when, by whom (the target's account), how many tokens."""

    at: datetime
    account: str
    tokens: int


def allocate(cost_mc: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split ``cost_mc`` in proportion to ``weights`` by largest remainder; shares sum to ``cost_mc``.

    Args:
        cost_mc: the amount to split, millicents (>= 0).
        weights: target -> weight (>= 0); at least one weight > 0 unless ``cost_mc`` is 0.

    Returns:
        target -> share in millicents, for every target with a weight > 0.

    Raises:
        ValueError: on a negative cost or weight, or a cost with no positive weight to carry it.
    """
    if cost_mc < 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"cost and weights must be >= 0, got cost {cost_mc} and weights {dict(weights)}")
    live = {k: w for k, w in weights.items() if w > 0}
    total = sum(live.values())
    if total == 0:
        if cost_mc:
            raise ValueError(f"cannot allocate {cost_mc} mc: no target has a weight > 0")
        return {}
    shares = {k: cost_mc * w // total for k, w in live.items()}
    left = cost_mc - sum(shares.values())
    by_remainder = sorted(live, key=lambda k: (-(cost_mc * live[k] % total), k))
    for k in by_remainder[:left]:
        shares[k] += 1
    return shares


def allocate_item(item: InfraItem, uses: Iterable[Use]) -> dict[str, dict[str, int]]:
    """Every period's share of an item per target account.

    Args:
        item: the item.
        uses: the calls (their time, the target account, tokens); with the calls basis each use weighs 1.

    Returns:
        period key (ISO date of the period's first day) -> target account -> share, millicents;
        each period's shares sum to ``item.cost_mc``; periods without use are absent.
    """
    weights: dict[str, dict[str, int]] = {}
    for use in uses:
        period = weights.setdefault(period_key(item.period, item.timezone, use.at), {})
        weight = 1 if item.basis is AllocationBasis.CALLS else use.tokens
        period[use.account] = period.get(use.account, 0) + weight
    return {p: allocate(item.cost_mc, w) for p, w in sorted(weights.items()) if any(w.values())}
