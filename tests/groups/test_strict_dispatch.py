"""Strict groups: the dispatch rule in the admit chain, over every ledger backend, in virtual time.

A strict group's member may call in its conversation only when dispatched for the message it
answers; the refusal is decided in the reservation's transaction and consumes no state.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from group_kit import MEMBERS, RULES, T0, msg
from hypothesis import given
from hypothesis import strategies as st

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.defenses.chain import BREAKER, FAN_OUT, KILL, LOOP, RETRY
from comptroller.domain.defenses.dispatch_rule import (
    DISPATCH,
    DISPATCHES_KEPT,
    DispatchGate,
    GroupMode,
    check_dispatched,
)
from comptroller.domain.defenses.verdict import Rule
from comptroller.domain.dispatch import DispatchConfig, Group
from comptroller.domain.dispatch.room import ROOM
from comptroller.domain.pricing import ModelPrice
from comptroller.domain.scopes import Attribution, Level
from comptroller.engine import Engine
from comptroller.groups import GroupDefinition, GroupService
from comptroller.groups.rows import GROUP
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from comptroller.storage import store_from_url

PRICE = ModelPrice(model="room-model", input_mtok=Decimal("10"), output_mtok=Decimal("30"), source="test")
KINDS = (BREAKER, KILL, LOOP, RETRY, FAN_OUT, DISPATCH, ROOM, GROUP)
TABLE = {"conversation": "room-1", "k": 2, "mode": "strict", "members": [
    {"agent": "ana", "role": "writer", "description": "python backend api database", "tenant": "acme"},
    {"agent": "ben", "role": "writer", "description": "css html frontend design", "tenant": "acme"},
    {"agent": "dee", "role": "judge", "description": "final decision release ship", "decides": True,
     "tenant": "acme"}]}


def _engine(store: LedgerStore, clock: VirtualClock) -> Engine:
    return Engine(store=store, prices=PriceBook(overrides={"room-model": PRICE}), clock=clock,
                  caps=OutputCaps(default_tokens=100))


def _service(store: LedgerStore, mode: GroupMode = GroupMode.STRICT, clock: VirtualClock | None = None,
             groups: tuple[GroupDefinition, ...] | None = None) -> GroupService:
    definition = GroupDefinition(Group("studio", MEMBERS, RULES, conversation="room-1"), DispatchConfig(k=2),
                                 tenants={"ana": "acme"}, mode=mode)
    return GroupService(engine=_engine(store, clock or VirtualClock(T0)), namespace="ns",
                        groups=(definition,) if groups is None else groups)


def _code(service: GroupService, agent: str, message_id: str | None = None, group: str = "studio") -> Code:
    return service.admit(group, agent, model="room-model", input_tokens_max=1_000, message_id=message_id).code


def _snapshot(store: LedgerStore) -> tuple[object, ...]:
    """Every state row of every kind the chain or the group service writes, and every account."""
    states = tuple(sorted((s.key, s.version) for kind in KINDS for s in store.states(kind)))
    accounts = tuple(sorted((a.budget.id, a.scope, a.settled_mc, a.reserved_mc) for a in store.accounts()))
    return states, accounts


def test_only_the_dispatched_members_are_admitted(store: LedgerStore) -> None:
    """After a message mentioning ana, ana is admitted; ben (a member left out) is refused with not_dispatched."""
    service = _service(store)
    decision = service.dispatch("studio", msg(1, "user", "@ana the python api is down", mentions=["ana"]))
    assert "ana" in decision.agents and "ben" not in decision.agents
    assert _code(service, "ana") is Code.OK
    refused = service.admit("studio", "ben", model="room-model", input_tokens_max=1_000)
    assert refused.code is Code.NOT_DISPATCHED
    assert refused.verdict is not None and refused.verdict.rule is Rule.DISPATCH
    assert refused.verdict.level is Level.CONVERSATION and refused.verdict.evidence["message_id"] == "m1"
    assert refused.verdict.retry_after_s is None


def test_a_refused_call_consumes_no_state(store: LedgerStore) -> None:
    """The refusal writes no state row and reserves nothing on any account, whatever layers are on."""
    store.put_budget(Budget(Level.CONVERSATION, ANY_SCOPE, 10**9))
    service = _service(store)
    service.dispatch("studio", msg(1, "user", "@ana the python api is down", mentions=["ana"]))
    assert _code(service, "ana") is Code.OK
    before = _snapshot(store)
    assert _code(service, "ben") is Code.NOT_DISPATCHED
    assert _snapshot(store) == before


def test_a_call_names_the_message_it_answers(store: LedgerStore) -> None:
    """Ben, dispatched for m1 but not for m2, is admitted naming m1 and refused by default (the latest is m2)."""
    service = _service(store)
    service.dispatch("studio", msg(1, "user", "@ben the css layout is broken", mentions=["ben"]))
    service.dispatch("studio", msg(2, "user", "@ana the python api is down", mentions=["ana"]))
    assert _code(service, "ben", "m1") is Code.OK
    assert _code(service, "ben") is Code.NOT_DISPATCHED
    assert _code(service, "ana") is Code.OK
    assert _code(service, "ana", "m1") is Code.NOT_DISPATCHED


def test_unknown_message_and_no_dispatch_are_refused(store: LedgerStore) -> None:
    """Before any dispatch every member is refused; a message id never dispatched is refused by name."""
    service = _service(store)
    first = service.admit("studio", "ana", model="room-model", input_tokens_max=1_000)
    assert first.verdict is not None and first.verdict.detector == "no_dispatch"
    service.dispatch("studio", msg(1, "user", "@ana the python api is down", mentions=["ana"]))
    named = service.admit("studio", "ana", model="room-model", input_tokens_max=1_000, message_id="m9")
    assert named.verdict is not None and named.verdict.detector == "unknown_message"


def test_an_advisory_group_admits_every_member(store: LedgerStore) -> None:
    """In an advisory group (the default mode) a member left out is still admitted: dispatch is advice."""
    service = _service(store, GroupMode.ADVISORY)
    service.dispatch("studio", msg(1, "user", "@ana the python api is down", mentions=["ana"]))
    assert _code(service, "ben") is Code.OK


def test_two_workers_see_one_room_and_one_gate(tmp_path: Path) -> None:
    """Two services on one SQLite ledger: a dispatch on one is enforced and cooled down on the other."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    clock = VirtualClock(T0)
    one, two = (_service(store_from_url(url), clock=clock) for _ in range(2))
    one.dispatch("studio", msg(1, "ana", "draft: the python api database index", mentions=["ben"]))
    assert _code(two, "ben") is Code.OK and _code(two, "cy") is Code.NOT_DISPATCHED
    assert [m.id for m in two.history("studio")] == ["m1"]
    later = two.dispatch("studio", msg(2, "user", "the python api database index is slow"))
    assert "ana" not in later.agents and later.reason_of("ana") == "cooldown"  # ana wrote m1 on the other worker


def test_an_admin_group_reaches_other_workers_and_survives_a_restart(tmp_path: Path) -> None:
    """A group put with persist=True is found by another service and by a new one on the same ledger."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    one, two = (_service(store_from_url(url), groups=()) for _ in range(2))
    one.put_group(GroupDefinition.from_mapping("review", TABLE), persist=True)
    assert two.group("review").mode is GroupMode.STRICT
    two.dispatch("review", msg(1, "user", "@ana the python api is down", mentions=["ana"]))
    restarted = _service(store_from_url(url), groups=())
    assert restarted.group_ids() == ["review"]
    assert _code(restarted, "ana", group="review") is Code.OK
    assert _code(restarted, "ben", group="review") is Code.NOT_DISPATCHED
    assert restarted.remove_group("review", persist=True)
    assert _service(store_from_url(url), groups=()).group_ids() == []


@given(st.lists(st.sampled_from([f"m{i}" for i in range(100)]), max_size=200))
def test_a_gate_keeps_the_latest_dispatches_once_each(ids: list[str]) -> None:
    """A gate holds each dispatched id once, at most DISPATCHES_KEPT of them, the latest last, and reads back."""
    gate = DispatchGate("g", GroupMode.STRICT)
    for message_id in ids:
        gate = gate.with_dispatch(message_id, ("ana",))
    kept = [m for m, _ in gate.dispatched]
    assert len(kept) == len(set(kept)) <= DISPATCHES_KEPT
    assert kept == list(dict.fromkeys(ids))[-DISPATCHES_KEPT:]
    assert DispatchGate.from_record(gate.to_record()) == gate
    assert gate.responders(None) == (None if not ids else (kept[-1], ("ana",)))


@pytest.mark.parametrize("mode", ["strict", "advisory"])
def test_the_mode_is_a_group_setting(mode: str) -> None:
    """``mode`` in a group table sets the definition's mode; without it a group is advisory."""
    assert GroupDefinition.from_mapping("review", {**TABLE, "mode": mode}).mode == mode
    assert GroupDefinition.from_mapping("review", {k: v for k, v in TABLE.items() if k != "mode"}).mode == "advisory"


def test_a_call_not_known_as_the_groups_names_no_responders() -> None:
    """A call whose worker has not loaded the group (conversation not shared) is refused without its responders."""
    gate = DispatchGate("review", GroupMode.STRICT).with_dispatch("m1", ("alice",))
    shared = Attribution(namespace="ns", tenant="acme", agent="bob", conversation="room-1", conversation_shared=True)
    private = Attribution(namespace="ns", tenant="acme", agent="bob", conversation="room-1")
    told, untold = check_dispatched(gate, shared, None), check_dispatched(gate, private, None)
    assert told is not None and "alice" in told.message and told.evidence["responders"] == "alice"
    assert untold is not None and "alice" not in untold.message and untold.evidence["responders"] == ""
    assert check_dispatched(gate, replace(private, agent="alice"), None) is None
