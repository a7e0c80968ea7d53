"""Routing report: escalation rate per tier, share answered per tier, P50/P95 cost per routed request.

DESIGN.md rule 7: track the escalation rate per tier and the P95 cost per call, not
only the mean; the worst case pays every tier. After L54 ("Scaling Agents"): when more
than 30 % of requests reach the top tier, the escalation signal is broken (the cheap
tiers are not answering), and the report says so.

Input is one :class:`RoutedRequest` per request: from the ledger's ``route`` events
(:func:`routed_from_events`, written by :mod:`comptroller.routing.runner`) or from an
offline simulation (``comptroller eval-cascade``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from comptroller.domain.ledger import Event
from comptroller.domain.money import format_usd

__all__ = [
    "TOP_TIER_WARNING_SHARE",
    "RoutedRequest",
    "RoutingReport",
    "TierStats",
    "build_routing_report",
    "render_routing_table",
    "routed_from_events",
]

TOP_TIER_WARNING_SHARE = 0.30
"""Above this share of requests reaching the top tier, the report warns (L54)."""


@dataclass(frozen=True, slots=True)
class RoutedRequest:
    """One request through a cascade.

    Attributes:
        cascade: the cascade's name.
        tiers: the cascade's tier names, cheapest first (the last is the top tier).
        tiers_tried: the tiers that made at least one attempt, in order.
        answered_tier: the tier whose answer was accepted (None: exhausted or refused).
        cost_mc: the settled cost of every attempt, millicents.
    """

    cascade: str
    tiers: tuple[str, ...]
    tiers_tried: tuple[str, ...]
    answered_tier: str | None
    cost_mc: int


@dataclass(frozen=True, slots=True)
class TierStats:
    """One tier's traffic.

    Attributes:
        tier: its name.
        reached: requests that made an attempt at this tier.
        answered: requests this tier answered.
        escalation_rate: of those that reached it, the share it did not answer (0 if none reached it).
        share_answered: of all requests, the share this tier answered.
    """

    tier: str
    reached: int
    answered: int
    escalation_rate: float
    share_answered: float


@dataclass(frozen=True, slots=True)
class RoutingReport:
    """The routing figures of one cascade.

    Attributes:
        cascade: the cascade's name.
        requests: how many requests.
        tiers: per tier, cheapest first.
        p50_cost_mc, p95_cost_mc, max_cost_mc: cost per request, millicents (nearest rank).
        top_tier_share: the share of requests that reached the top tier.
        warning: a sentence when ``top_tier_share`` > 30 %, else None.
    """

    cascade: str
    requests: int
    tiers: tuple[TierStats, ...]
    p50_cost_mc: int
    p95_cost_mc: int
    max_cost_mc: int
    top_tier_share: float
    warning: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"cascade": self.cascade, "requests": self.requests, "p50_cost_mc": self.p50_cost_mc,
                "p95_cost_mc": self.p95_cost_mc, "max_cost_mc": self.max_cost_mc,
                "top_tier_share": self.top_tier_share, "warning": self.warning,
                "tiers": [{"tier": t.tier, "reached": t.reached, "answered": t.answered,
                           "escalation_rate": t.escalation_rate, "share_answered": t.share_answered}
                          for t in self.tiers]}


def _nearest_rank(sorted_values: Sequence[int], pct: int) -> int:
    if not sorted_values:
        return 0
    return sorted_values[max(1, math.ceil(pct / 100 * len(sorted_values))) - 1]


def build_routing_report(requests: Sequence[RoutedRequest]) -> list[RoutingReport]:
    """One report per cascade, in order of first appearance.

    Raises:
        ValueError: if requests of one cascade disagree on its tiers.
    """
    by_cascade: dict[str, list[RoutedRequest]] = {}
    for request in requests:
        by_cascade.setdefault(request.cascade, []).append(request)
    return [_report(name, group) for name, group in by_cascade.items()]


def _report(name: str, group: Sequence[RoutedRequest]) -> RoutingReport:
    tiers = group[0].tiers
    if any(r.tiers != tiers for r in group):
        raise ValueError(f"cascade {name!r}: requests disagree on its tiers; report one configuration at a time")
    n = len(group)
    stats = []
    for tier in tiers:
        reached = sum(tier in r.tiers_tried for r in group)
        answered = sum(r.answered_tier == tier for r in group)
        stats.append(TierStats(tier, reached, answered, (reached - answered) / reached if reached else 0.0,
                               answered / n))
    costs = sorted(r.cost_mc for r in group)
    top_share = stats[-1].reached / n if stats else 0.0
    warning = None
    if top_share > TOP_TIER_WARNING_SHARE:
        warning = (f"{top_share:.1%} of requests reached the top tier {tiers[-1]!r} (over "
                   f"{TOP_TIER_WARNING_SHARE:.0%}): the escalation signal is too weak or the cheap tiers too weak "
                   "for this traffic; tighten the gates' precision, or route such requests straight to a higher tier")
    return RoutingReport(name, n, tuple(stats), _nearest_rank(costs, 50), _nearest_rank(costs, 95), costs[-1],
                         top_share, warning)


def routed_from_events(events: Iterable[Event]) -> list[RoutedRequest]:
    """The requests recorded as ``route`` events by the cascade runner (other events are ignored)."""
    return [RoutedRequest(cascade=e.detail["cascade"], tiers=tuple(e.detail["tiers"]),
                          tiers_tried=tuple(e.detail["tiers_tried"]),
                          answered_tier=e.detail["tier"] if e.detail["outcome"] == "answered" else None,
                          cost_mc=int(e.detail["cost_mc"]))
            for e in events if e.kind == "route"]


def render_routing_table(report: RoutingReport) -> Table:
    """The report as a rich table (one row per tier), the cost percentiles in the caption."""
    table = Table(title=f"Cascade {report.cascade!r}: {report.requests:,} requests", title_justify="left")
    for column in ("tier", "reached", "answered", "escalation rate", "share answered"):
        table.add_column(column, justify="left" if column == "tier" else "right")
    for t in report.tiers:
        table.add_row(t.tier, f"{t.reached:,}", f"{t.answered:,}", f"{t.escalation_rate:.1%}",
                      f"{t.share_answered:.1%}")
    table.caption = (f"cost per request P50 {format_usd(report.p50_cost_mc)}, P95 {format_usd(report.p95_cost_mc)}, "
                     f"max {format_usd(report.max_cost_mc)}; top tier reached by {report.top_tier_share:.1%}")
    return table
