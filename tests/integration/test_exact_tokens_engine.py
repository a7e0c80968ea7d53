"""The engine recounts a call's input only when its byte-bound ceiling does not fit, on every ledger backend."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.pricing import ceiling_mc
from comptroller.domain.scopes import Level
from comptroller.engine import CallRequest, Engine
from comptroller.engine.recount import RECOUNT_WINDOW_CEILINGS
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from comptroller.storage.memory import MemoryStore
from ledger_kit import attribution

START = datetime(2025, 6, 1, 9, tzinfo=UTC)
MODEL = "gpt-4o-mini"
BYTES, EXACT, OUTPUT = 3_000, 600, 100


class Recount:
    """A recount answering ``tokens`` for every model it covers, recording the models it was asked about."""

    def __init__(self, tokens: int | None, *, covers: bool = True) -> None:
        self.tokens = tokens
        self.covered = covers
        self.asked: list[str] = []

    def covers(self, model: str) -> bool:
        return self.covered

    def __call__(self, model: str) -> int | None:
        self.asked.append(model)
        return self.tokens


def _engine(store: LedgerStore) -> Engine:
    return Engine(store=store, prices=PriceBook(), clock=VirtualClock(START), caps=OutputCaps(default_tokens=OUTPUT))


def _ceiling(input_tokens: int) -> int:
    return ceiling_mc(PriceBook().price(MODEL, START), input_tokens_max=input_tokens, output_tokens_max=OUTPUT)


def _call(recount: Recount | None, key: str | None = None) -> CallRequest:
    return CallRequest(attribution(), MODEL, input_tokens_max=BYTES, max_tokens=OUTPUT, idempotency_key=key,
                       input_recount=recount)


def test_a_call_far_from_the_edge_is_never_recounted(store: LedgerStore) -> None:
    """With room for the window's byte-bound ceilings, the call is held on its byte bound, the recount not asked."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, RECOUNT_WINDOW_CEILINGS * _ceiling(BYTES)))
    recount = Recount(EXACT)
    admission = _engine(store).admit(_call(recount))
    assert admission.code is Code.OK and admission.ceiling_mc == _ceiling(BYTES)
    assert recount.asked == []


def test_within_the_window_a_call_that_fits_is_held_on_its_recount(store: LedgerStore) -> None:
    """One ceiling short of the window, the call is recounted and held on the recounted ceiling."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, RECOUNT_WINDOW_CEILINGS * _ceiling(BYTES) - 1))
    recount = Recount(EXACT)
    admission = _engine(store).admit(_call(recount))
    assert admission.code is Code.OK and recount.asked == [MODEL]
    assert admission.ceiling_mc == _ceiling(EXACT)


def test_near_the_edge_the_call_is_held_on_its_recounted_input(store: LedgerStore) -> None:
    """A budget between the recounted and the byte-bound ceiling admits the call on the recount, with no refusal."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, _ceiling(BYTES) - 1))
    recount = Recount(EXACT)
    admission = _engine(store).admit(_call(recount))
    assert admission.code is Code.OK and recount.asked == [MODEL]
    assert admission.reservation is not None and admission.reservation.input_tokens_max == EXACT
    assert admission.ceiling_mc == _ceiling(EXACT)
    assert [a.reserved_mc for a in store.accounts()] == [_ceiling(EXACT)]
    assert list(store.events("refusal")) == []


def test_exactly_the_calls_that_fit_on_the_recount_are_admitted(store: LedgerStore) -> None:
    """A budget of 5 recounted ceilings admits exactly 5 calls (the byte bound alone: 1), never a 6th."""
    limit = 5 * _ceiling(EXACT)
    assert limit // _ceiling(BYTES) == 1
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, limit))
    engine = _engine(store)
    codes = [engine.admit(_call(Recount(EXACT))).code for _ in range(7)]
    assert codes == [Code.OK] * 5 + [Code.BUDGET_EXCEEDED] * 2
    (account,) = store.accounts()
    assert account.reserved_mc == 5 * _ceiling(EXACT) <= account.budget.limit_mc
    assert len(list(store.events("refusal"))) == 2  # one per refused call, none for the recounted admissions


def test_a_recount_that_does_not_fit_refuses_once_with_the_recounted_ceiling(store: LedgerStore) -> None:
    """When even the recounted ceiling is too big, the call is refused with one refusal event naming it."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, _ceiling(EXACT) - 1))
    admission = _engine(store).admit(_call(Recount(EXACT)))
    assert admission.code is Code.BUDGET_EXCEEDED and admission.refusal is not None
    assert admission.refusal.requested_mc == _ceiling(EXACT)
    (event,) = store.events("refusal")
    assert event.detail["requested_mc"] == _ceiling(EXACT)


def test_no_recount_when_even_the_output_bound_alone_does_not_fit(store: LedgerStore) -> None:
    """A budget below the output bound's cost refuses on the byte bound without asking the recount."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, _ceiling(0) - 1))
    recount = Recount(EXACT)
    admission = _engine(store).admit(_call(recount))
    assert admission.code is Code.BUDGET_EXCEEDED and recount.asked == []
    assert admission.ceiling_mc == _ceiling(BYTES)


def test_a_model_without_an_exact_tokenizer_keeps_the_byte_bound(store: LedgerStore) -> None:
    """A recount answering None (no tokenizer for the model) leaves the byte-bound refusal as it was."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, _ceiling(BYTES) - 1))
    admission = _engine(store).admit(_call(Recount(None)))
    assert admission.code is Code.BUDGET_EXCEEDED and admission.ceiling_mc == _ceiling(BYTES)
    assert len(list(store.events("refusal"))) == 1


def test_a_model_the_recount_does_not_cover_takes_one_transaction(store: LedgerStore) -> None:
    """A recount that does not cover the model is never asked: the call is refused on its byte bound at once."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, _ceiling(BYTES) - 1))
    recount = Recount(EXACT, covers=False)
    admission = _engine(store).admit(_call(recount))
    assert admission.code is Code.BUDGET_EXCEEDED and recount.asked == []


def test_a_recount_above_the_byte_bound_is_not_used(store: LedgerStore) -> None:
    """The byte bound is an upper bound too: the lower of the two is held, never the higher."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, _ceiling(BYTES) - 1))
    admission = _engine(store).admit(_call(Recount(BYTES * 2)))
    assert admission.code is Code.BUDGET_EXCEEDED and admission.ceiling_mc == _ceiling(BYTES)


def test_a_retry_of_a_recounted_call_answers_already_reserved(store: LedgerStore) -> None:
    """The same idempotency key again finds the reservation held on the recount, not a conflict."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, _ceiling(BYTES) - 1))
    engine = _engine(store)
    first = engine.admit(_call(Recount(EXACT), key="k"))
    second = engine.admit(_call(Recount(EXACT), key="k"))
    assert (first.code, second.code) == (Code.OK, Code.ALREADY_RESERVED)
    assert first.reservation is not None and second.reservation is not None
    assert first.reservation.id == second.reservation.id
    assert [a.reserved_mc for a in store.accounts()] == [_ceiling(EXACT)]


@pytest.mark.parametrize("level", [Level.AGENT, Level.TENANT, Level.NAMESPACE])
def test_racing_threads_hold_exactly_the_recounted_ceilings_that_fit(store: LedgerStore, level: Level) -> None:
    """16 threads racing 48 recounted calls for a budget of K recounted ceilings: exactly K admitted, none more
    (tenant and namespace accounts are the ones PostgreSQL splits into escrow shards)."""
    k = 7
    limit = k * _ceiling(EXACT) + _ceiling(EXACT) // 2
    store.put_budget(Budget(level, ANY_SCOPE, limit))
    engine = _engine(store)
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: engine.admit(_call(Recount(EXACT))).code, range(48)))
    assert codes.count(Code.OK) == k and codes.count(Code.BUDGET_EXCEEDED) == 48 - k
    (account,) = store.accounts()
    assert account.reserved_mc == k * _ceiling(EXACT) <= limit


@given(limit_ceilings=st.integers(1, 80), calls=st.lists(st.tuples(st.integers(1, 5_000), st.integers(0, 100)),
                                                          min_size=1, max_size=30))
def test_admissions_follow_the_reference_model(limit_ceilings: int, calls: list[tuple[int, int]]) -> None:
    """Each call is held on its byte bound far from the edge, on its recount within the window, or refused;
    reserved never exceeds the limit (the reference model: room, window and both ceilings, call by call)."""
    store = MemoryStore()
    limit = limit_ceilings * _ceiling(1_000)
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, limit))
    engine = _engine(store)
    reserved = 0
    for by_bytes, saved_pct in calls:
        exact = by_bytes - by_bytes * saved_pct // 100
        call = CallRequest(attribution(), MODEL, input_tokens_max=by_bytes, max_tokens=OUTPUT,
                           input_recount=Recount(exact))
        room, byte_ceiling = limit - reserved, _ceiling(by_bytes)
        near_edge = byte_ceiling * RECOUNT_WINDOW_CEILINGS > room and _ceiling(0) <= room
        held = _ceiling(min(exact, by_bytes)) if near_edge else byte_ceiling
        admission = engine.admit(call)
        assert admission.admitted == (held <= room)
        assert admission.ceiling_mc == held
        reserved += held if admission.admitted else 0
        (account,) = store.accounts()
        assert account.reserved_mc == reserved <= limit
