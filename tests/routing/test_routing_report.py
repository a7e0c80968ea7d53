"""Routing report: per-tier escalation and answer shares, cost percentiles, the >30 % top-tier warning."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from comptroller.clock import VirtualClock
from comptroller.domain.caps import OutputCaps
from comptroller.domain.pricing import ModelPrice
from comptroller.domain.routing import Cascade, NonEmptyGate, Tier
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import Engine
from comptroller.prices import PriceBook
from comptroller.reports.routing import RoutedRequest, build_routing_report, routed_from_events
from comptroller.routing import CascadeRequest, TierCall, TierReply, run_cascade
from comptroller.storage.memory import MemoryStore

TIERS = ("local", "mid", "frontier")


def _requests(answered_at: list[int], cost_mc: list[int]) -> list[RoutedRequest]:
    return [RoutedRequest("c", TIERS, TIERS[: i + 1], TIERS[i], cost) for i, cost in zip(answered_at, cost_mc,
                                                                                          strict=True)]


def test_tier_figures_follow_from_where_requests_were_answered() -> None:
    """6 local, 2 mid, 2 frontier of 10: escalation 4/10 at local, 2/4 at mid; shares 60/20/20 %."""
    (report,) = build_routing_report(_requests([0] * 6 + [1] * 2 + [2] * 2, list(range(1, 11))))
    local, mid, frontier = report.tiers
    assert (local.reached, local.answered, local.escalation_rate) == (10, 6, 0.4)
    assert (mid.reached, mid.answered, mid.escalation_rate) == (4, 2, 0.5)
    assert (frontier.reached, frontier.share_answered) == (2, 0.2)
    assert (report.p50_cost_mc, report.p95_cost_mc, report.max_cost_mc) == (5, 10, 10)
    assert report.top_tier_share == 0.2 and report.warning is None


def test_the_warning_fires_only_above_thirty_percent_at_the_top_tier() -> None:
    """3 of 10 at the top tier is no warning; 4 of 10 is."""
    (at_30,) = build_routing_report(_requests([0] * 7 + [2] * 3, [1] * 10))
    (at_40,) = build_routing_report(_requests([0] * 6 + [2] * 4, [1] * 10))
    assert at_30.warning is None
    assert at_40.warning is not None and "40.0%" in at_40.warning


def test_the_report_reads_the_route_events_the_runner_wrote() -> None:
    """Two requests through the engine (one escalated) give the same figures from the ledger's events."""
    store = MemoryStore()
    prices = PriceBook(overrides={m: ModelPrice(model=m, input_mtok=Decimal(1), output_mtok=Decimal(2), source="t")
                                  for m in ("small", "big")})
    engine = Engine(store=store, prices=prices, clock=VirtualClock(datetime(2025, 1, 1, tzinfo=UTC)),
                    caps=OutputCaps(default_tokens=100))
    cascade = Cascade("c", (Tier("local", ("small",), 1, (NonEmptyGate(),)), Tier("frontier", ("big",))))
    for text in ("fine", ""):
        def call(tier_call: TierCall, text: str = text) -> TierReply:
            return TierReply(text if tier_call.model == "small" else "big answer", Usage(1_000, 100))
        run_cascade(engine, cascade, CascadeRequest(Attribution(agent="a"), 1_000), call)
    (report,) = build_routing_report(routed_from_events(store.events()))
    assert [(t.tier, t.reached, t.answered) for t in report.tiers] == [("local", 2, 1), ("frontier", 1, 1)]
    settled = sorted(r.cost_mc for r in store.usage_records())
    assert report.max_cost_mc == settled[0] + settled[-1] and report.top_tier_share == 0.5
