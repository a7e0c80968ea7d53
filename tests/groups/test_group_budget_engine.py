"""The group budget is the ledger's conversation budget: it drives k and refuses dispatched agents' real calls.

Runs through the real Engine over every ledger backend (memory, SQLite) in virtual time.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from group_kit import MEMBERS, RULES, T0, msg

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.dispatch import DispatchConfig, Group, Kind, MessageError, Mode, Reason
from comptroller.domain.pricing import ModelPrice, ceiling_mc
from comptroller.domain.scopes import Level, scope_key
from comptroller.domain.usage import Usage
from comptroller.engine import Engine
from comptroller.groups import GroupDefinition, GroupService
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook

PRICE = ModelPrice(model="room-model", input_mtok=Decimal("10"), output_mtok=Decimal("30"), source="test")
INPUT, OUTPUT = 1_000, 100
CALL_MC = ceiling_mc(PRICE, input_tokens_max=INPUT, output_tokens_max=OUTPUT)


def _service(store: LedgerStore, clock: VirtualClock) -> GroupService:
    engine = Engine(store=store, prices=PriceBook(overrides={"room-model": PRICE}), clock=clock,
                    caps=OutputCaps(default_tokens=OUTPUT))
    definition = GroupDefinition(Group("studio", MEMBERS, RULES, conversation="room-1"), DispatchConfig(k=2),
                                 tenants={"ana": "acme"})
    return GroupService(engine=engine, namespace="ns", groups=[definition])


def _answer(service: GroupService, agent: str) -> Code:
    """The agent makes its real call for the group: admit, then settle at exactly the ceiling's tokens."""
    admission = service.admit("studio", agent, model="room-model", input_tokens_max=INPUT, max_tokens=OUTPUT)
    if admission.reservation is not None:
        service.engine.settle(admission.reservation, Usage(input_tokens=INPUT, output_tokens=OUTPUT))
    return admission.code


def test_a_dispatched_agents_call_is_refused_once_the_group_budget_is_spent(store: LedgerStore) -> None:
    """Three calls fit the conversation budget; then the dispatcher wraps up and the decider's call is refused."""
    store.put_budget(Budget(Level.CONVERSATION, scope_key("ns", "room-1"), 3 * CALL_MC))
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 100 * CALL_MC))  # looser: the group budget must be the one
    clock = VirtualClock(T0)
    service = _service(store, clock)

    first = service.dispatch("studio", msg(1, "ana", "draft of the api", Kind.DRAFT))
    assert (first.mode, first.agents) == (Mode.FULL, ("ben", "cy"))
    assert [_answer(service, a) for a in first.agents] == [Code.OK, Code.OK]
    assert service.remaining("studio") == 1 / 3

    clock.advance(60)
    second = service.dispatch("studio", msg(2, "ben", "draft of the layout", Kind.DRAFT))
    assert (second.mode, second.k, second.agents) == (Mode.REDUCED, 1, ("cy",))  # 1/3 left: ceil(2/2)
    assert (second.reason_of("ana"), second.reason_of("dee")) == (Reason.COOLDOWN, Reason.OVER_K)
    assert _answer(service, "cy") is Code.OK
    assert service.remaining("studio") == 0.0

    clock.advance(60)
    spent = service.dispatch("studio", msg(3, "user", "@ana one more change please", mentions=["ana"]))
    assert (spent.mode, spent.agents) == (Mode.WRAP_UP, ("dee",))
    assert spent.reason_of("ana") is Reason.BUDGET_SPENT

    admission = service.admit("studio", "dee", model="room-model", input_tokens_max=INPUT, max_tokens=OUTPUT)
    assert admission.code is Code.BUDGET_EXCEEDED and admission.refusal is not None
    assert (admission.refusal.level, admission.refusal.scope) == (Level.CONVERSATION, scope_key("ns", "room-1"))
    assert (admission.refusal.settled_mc, admission.refusal.requested_mc) == (3 * CALL_MC, CALL_MC)


def test_every_call_of_the_group_lands_on_its_conversation_and_each_decision_is_logged(store: LedgerStore) -> None:
    """Calls carry the group's conversation and the member's tenant; the ledger keeps one dispatch event each."""
    store.put_budget(Budget(Level.CONVERSATION, ANY_SCOPE, 50 * CALL_MC))
    service = _service(store, VirtualClock(T0))
    decision = service.dispatch("studio", msg(1, "user", "the python api database is down"))
    assert decision.agents == ("ana",) and _answer(service, "ana") is Code.OK
    assert service.dispatch("studio", msg(1, "user", "the python api database is down")) == decision  # a retry

    (record,) = store.usage_records()
    assert (record.attribution.conversation, record.attribution.tenant, record.attribution.agent) == (
        "room-1", "acme", "ana")
    (event,) = store.events("dispatch")
    assert (event.level, event.scope, event.code) == ("conversation", scope_key("ns", "room-1"), "full")
    assert event.detail["responders"] == [{"agent": "ana", "reason": "ranked", "score": decision.responders[0].score}]
    assert {x["agent"]: x["reason"] for x in event.detail["left_out"]} == {
        x.agent: str(x.reason) for x in decision.left_out}
    assert service.remaining("studio") == (50 * CALL_MC - CALL_MC) / (50 * CALL_MC)


def test_a_message_id_reused_for_other_content_is_refused(store: LedgerStore) -> None:
    """A retry with the same message is answered once; the same id with another text is an error, not recorded."""
    service = _service(store, VirtualClock(T0))
    service.dispatch("studio", msg(1, "user", "the python api is down"))
    with pytest.raises(MessageError, match=r"message id 'm1' was already used for another message"):
        service.dispatch("studio", msg(1, "user", "the css is broken"))
    service.record("studio", msg(1, "user", "the python api is down"))
    assert [m.text for m in service.history("studio")] == ["the python api is down"]


def test_a_retry_stamped_later_gets_the_first_decision(store: LedgerStore) -> None:
    """The same message id and content posted again at another time is a retry, not a new message."""
    service = _service(store, VirtualClock(T0))
    first = service.dispatch("studio", msg(1, "user", "the python api is down"))
    later = replace(msg(1, "user", "the python api is down"), at=T0 + timedelta(seconds=30))
    assert service.dispatch("studio", later) == first
    assert len(service.history("studio")) == 1


def test_without_a_conversation_budget_the_group_runs_at_full_k(store: LedgerStore) -> None:
    """No conversation budget: the remaining fraction is None and k is the group's k."""
    service = _service(store, VirtualClock(T0))
    assert service.remaining("studio") is None
    decision = service.dispatch("studio", msg(1, "ana", "draft", Kind.DRAFT))
    assert (decision.mode, decision.k, decision.remaining) == (Mode.FULL, 2, None)


def test_isolated_roles_read_drafts_and_verdicts_only(store: LedgerStore) -> None:
    """The critic's context holds the drafts and its own messages, not the writers' reactions to its critique."""
    service = _service(store, VirtualClock(T0))
    posts = [msg(1, "ana", "draft one", Kind.DRAFT), msg(2, "cy", "critique: missing tests"),
             msg(3, "ana", "cy is wrong, tests are fine"), msg(4, "dee", "ship draft one", Kind.VERDICT),
             msg(5, "ben", "agreed with ana")]
    for post in posts:
        service.dispatch("studio", post)
    assert [m.id for m in service.context("studio", "cy")] == ["m1", "m2", "m4"]
    assert [m.id for m in service.context("studio", "dee")] == ["m1", "m4"]
    assert [m.id for m in service.context("studio", "ben")] == ["m1", "m2", "m3", "m4", "m5"]
