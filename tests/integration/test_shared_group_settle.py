"""A shared group's spend is counted on the group's own scope at settle, on every backend (DESIGN.md rules 1, 5, 13).

A registered shared group's conversation scope is ``ns|group`` (every member's calls share
it), not the tenant's ``ns|tenant|group``. The ledger keeps that flag with the hold
(``Attribution.conversation_shared``), so the settle, which rebuilds the attribution from
the stored reservation, counts the spend in the conversation breaker's window under the
same key the admission checked.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from comptroller.clock import VirtualClock
from comptroller.domain.breaker import BreakerConfig
from comptroller.domain.caps import OutputCaps
from comptroller.domain.defenses.breaker_policy import BreakerPolicy
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.pricing import ModelPrice, cost_mc
from comptroller.domain.scopes import Level, scope_key
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.engine.admin import Admin
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from ledger_kit import attribution

START = datetime(2025, 6, 2, 9, tzinfo=UTC)
FLAT = ModelPrice(model="flat", input_mtok=Decimal(0), output_mtok=Decimal(50), source="test")
ANSWER = Usage(input_tokens=0, output_tokens=1_000)
BREAKER = BreakerConfig(threshold_mc=10**9, window_s=3600)  # counts, never trips: the test reads its window


def test_a_shared_groups_breaker_counts_settled_spend_under_the_groups_scope(store: LedgerStore) -> None:
    """Members of two tenants in one shared group settle into one conversation breaker window keyed ns|group."""
    clock = VirtualClock(START)
    defenses = replace(Defenses.budgets_only(), breakers=BreakerPolicy(levels={Level.CONVERSATION: BREAKER}))
    engine = Engine(store=store, prices=PriceBook(overrides={"flat": FLAT}), clock=clock,
                    caps=OutputCaps(default_tokens=1_000), ttl_s=60.0, defenses=defenses)
    members = [replace(attribution(agent, tenant=tenant, conversation="room"), conversation_shared=True)
               for agent, tenant in (("a1", "t1"), ("a2", "t2"))]
    for who in members:
        admission = engine.admit(CallRequest(who, "flat", input_tokens_max=0))
        assert admission.reservation is not None
        stored = store.reservation(admission.reservation.id)
        assert stored is not None and stored.attribution == who  # the flag is kept with the hold
        engine.settle(admission.reservation, ANSWER)
    conversation = [b for b in Admin(store, clock).breakers() if b.level is Level.CONVERSATION]
    assert [b.scope for b in conversation] == [scope_key("ns", "room")]  # not ns|t1|room, ns|t2|room
    assert conversation[0].window_spend_mc == len(members) * cost_mc(FLAT, ANSWER)
