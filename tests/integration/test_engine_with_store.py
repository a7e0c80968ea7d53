"""The engine over a real price book and every ledger backend: ceilings, refusals, settles at admission price."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.pricing import ModelPrice, ceiling_mc, cost_mc
from comptroller.domain.scopes import Level
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from ledger_kit import attribution

START = datetime(2025, 6, 1, 9, tzinfo=UTC)


def _engine(store: LedgerStore, clock: VirtualClock, *, overrides: dict[str, ModelPrice] | None = None,
            aliases: dict[str, str] | None = None) -> Engine:
    return Engine(store=store, prices=PriceBook(overrides=overrides, aliases=aliases), clock=clock,
                  caps=OutputCaps(default_tokens=1_000, by_agent={"terse": 100}), ttl_s=30.0)


def test_admit_holds_the_priced_ceiling_with_the_capped_output(store: LedgerStore) -> None:
    """admit resolves the alias, caps max_tokens, prices the ceiling, and holds it for the engine's lease."""
    clock = VirtualClock(START)
    engine = _engine(store, clock, aliases={"fast": "gpt-4o-mini"})
    admission = engine.admit(CallRequest(attribution("terse"), "fast", input_tokens_max=5_000, max_tokens=4_096))
    price = PriceBook().price("gpt-4o-mini", START)
    assert (admission.code, admission.model, admission.output_tokens_max) == (Code.OK, "gpt-4o-mini", 100)
    assert admission.ceiling_mc == ceiling_mc(price, input_tokens_max=5_000, output_tokens_max=100)
    assert admission.reservation is not None
    assert admission.reservation.ceiling_mc == admission.ceiling_mc
    assert admission.reservation.expires_at == START + timedelta(seconds=30)


def test_refused_admission_records_a_refusal_event(store: LedgerStore) -> None:
    """A refused call answers budget_exceeded with the level, and the ledger keeps a refusal event."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 1))
    engine = _engine(store, VirtualClock(START))
    who = attribution("a1", conversation="room", task="t", phase="Coding")
    admission = engine.admit(CallRequest(who, "gpt-4o", input_tokens_max=10_000))
    assert admission.code is Code.BUDGET_EXCEEDED and not admission.admitted
    assert admission.refusal is not None and admission.refusal.level is Level.AGENT
    (event,) = store.events("refusal")
    assert (event.code, event.level, event.scope) == ("budget_exceeded", "agent", admission.refusal.scope)
    assert event.detail["requested_mc"] == admission.ceiling_mc
    assert (event.detail["model"], event.detail["phase"]) == ("gpt-4o", "Coding")


def test_settle_prices_at_admission_time_and_is_idempotent(store: LedgerStore) -> None:
    """The settled cost uses the price at admission even if time moved on; a second settle charges nothing."""
    clock = VirtualClock(START)
    engine = _engine(store, clock)
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 10**9))
    admission = engine.admit(CallRequest(attribution(), "gpt-4o", input_tokens_max=2_000, idempotency_key="k"))
    assert admission.reservation is not None
    clock.advance(10)
    usage = Usage(1_500, 300, cache_read_tokens=1_000)
    first = engine.settle(admission.reservation, usage)
    second = engine.settle(admission.reservation, usage)
    expected = cost_mc(PriceBook().price("gpt-4o", START), usage)
    assert (first.code, second.code) == (Code.SETTLED, Code.ALREADY_SETTLED)
    assert first.record is not None and first.record.cost_mc == expected
    assert [a.settled_mc for a in store.accounts()] == [expected]


def test_retry_with_the_same_idempotency_key_holds_once(store: LedgerStore) -> None:
    """Two admits with the same key hold one ceiling; the second answers already_reserved."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 10**9))
    engine = _engine(store, VirtualClock(START))
    call = CallRequest(attribution(), "gpt-4o", input_tokens_max=100, idempotency_key="same")
    first, second = engine.admit(call), engine.admit(call)
    assert (first.code, second.code) == (Code.OK, Code.ALREADY_RESERVED)
    assert [a.reserved_mc for a in store.accounts()] == [first.ceiling_mc]


def test_release_returns_the_hold_and_late_settle_still_charges(store: LedgerStore) -> None:
    """After release the hold is gone; a settle arriving later still records the true cost as settled_late."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 10**9))
    local = ModelPrice("local", input_mtok=Decimal("1"), output_mtok=Decimal("3"))
    engine = _engine(store, VirtualClock(START), overrides={"local": local})
    admission = engine.admit(CallRequest(attribution(), "local", input_tokens_max=1_000))
    assert admission.reservation is not None
    assert engine.release(admission.reservation).code is Code.RELEASED
    assert [a.reserved_mc for a in store.accounts()] == [0]
    late = engine.settle(admission.reservation, Usage(800, 200))
    assert late.code is Code.SETTLED_LATE
    assert [a.settled_mc for a in store.accounts()] == [cost_mc(local, Usage(800, 200))]


def test_unknown_model_is_an_error_before_anything_is_held(store: LedgerStore) -> None:
    """An unpriced model raises before the ledger is touched."""
    engine = _engine(store, VirtualClock(START))
    with pytest.raises(LookupError, match="no-such-model-zz"):
        engine.admit(CallRequest(attribution(), "no-such-model-zz", input_tokens_max=10))
    assert store.accounts() == [] and store.events() == []
