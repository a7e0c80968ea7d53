"""Sent reservations, lease renewal and the ``unknown_outcome`` rule, on every backend (DESIGN.md rule 12).

A reservation made with ``sends=True`` is for a call that goes upstream right after
admission. When its lease expires unresolved it is charged its ceiling as
``unknown_outcome``; a late settle corrects that to the real cost and a late release
to zero, so the call is charged exactly once. A reservation never sent expires to zero.
Expected money is derived from the ceilings and costs the tests choose.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.ledger import ReservationState, ReserveRequest
from comptroller.domain.reconcile import reconcile, unknown_outcomes
from comptroller.domain.scopes import Level
from comptroller.ports import LedgerStore
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import T0, USAGE, account_of, assert_accounts_within_limits, attribution, reserve_request

LIMIT_MC = 1_000
TTL_S = 60.0
WHO = attribution("a1")
AGENT_SCOPE = dict(WHO.scopes())[Level.AGENT]
BUDGET = Budget(Level.AGENT, ANY_SCOPE, LIMIT_MC)


def _sent(key: str, ceiling_mc: int) -> ReserveRequest:
    return replace(reserve_request(key, ceiling_mc, ttl_s=TTL_S), sends=True)


def _reserve(store: LedgerStore, request: ReserveRequest) -> str:
    result = store.reserve(request, T0)
    assert result.reservation is not None, result
    return result.reservation.id


def _after(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


@pytest.fixture
def ledger(store: LedgerStore) -> LedgerStore:
    """The store under test with one agent budget of ``LIMIT_MC``."""
    store.put_budget(BUDGET)
    return store


def test_a_sent_lease_that_expires_is_charged_its_ceiling_as_unknown_outcome(ledger: LedgerStore) -> None:
    """Expiry of a sent reservation moves its ceiling from reserved to settled, with one usage row and an event."""
    rid = _reserve(ledger, _sent("k1", 400))
    assert ledger.expire(T0 + _after(TTL_S)) == 1
    reservation = ledger.reservation(rid)
    assert reservation is not None and reservation.sent
    assert reservation.state is ReservationState.UNKNOWN_OUTCOME
    account = account_of(ledger, BUDGET, AGENT_SCOPE)
    assert (account.settled_mc, account.reserved_mc) == (400, 0)
    [record] = list(ledger.usage_records())
    assert (record.reservation_id, record.cost_mc, record.outcome) == (rid, 400, "unknown_outcome")
    [event] = ledger.events("unknown_outcome")
    assert event.detail["reservation_id"] == rid and event.detail["ceiling_mc"] == 400
    snapshot = ledger.ledger_snapshot()
    assert reconcile(snapshot) == []
    assert [h.reservation_id for h in unknown_outcomes(snapshot)] == [rid]


def test_a_lease_never_sent_expires_to_zero(ledger: LedgerStore) -> None:
    """Expiry of an unsent reservation returns its hold and charges nothing."""
    rid = _reserve(ledger, reserve_request("k1", 400, ttl_s=TTL_S))
    assert ledger.expire(T0 + _after(TTL_S)) == 1
    reservation = ledger.reservation(rid)
    assert reservation is not None and not reservation.sent and reservation.state is ReservationState.EXPIRED
    account = account_of(ledger, BUDGET, AGENT_SCOPE)
    assert (account.settled_mc, account.reserved_mc) == (0, 0)
    assert list(ledger.usage_records()) == [] and ledger.events("unknown_outcome") == []


def test_a_late_settle_corrects_the_ceiling_charge_to_the_real_cost_once(ledger: LedgerStore) -> None:
    """A settle after the unknown_outcome charge rewrites the one usage row to its cost; a repeat changes nothing."""
    rid = _reserve(ledger, _sent("k1", 400))
    ledger.expire(T0 + _after(TTL_S))
    late = T0 + _after(TTL_S + 5)
    result = ledger.settle(rid, USAGE, 150, late)
    assert result.code is Code.SETTLED_LATE
    assert ledger.settle(rid, USAGE, 150, late).code is Code.ALREADY_SETTLED
    assert ledger.release(rid, late).code is Code.ALREADY_SETTLED
    account = account_of(ledger, BUDGET, AGENT_SCOPE)
    assert (account.settled_mc, account.reserved_mc) == (150, 0)
    [record] = list(ledger.usage_records())
    assert (record.cost_mc, record.outcome, record.usage) == (150, "settled_late", USAGE)
    assert reconcile(ledger.ledger_snapshot()) == []
    assert unknown_outcomes(ledger.ledger_snapshot()) == []


def test_a_late_release_corrects_the_ceiling_charge_to_zero(ledger: LedgerStore) -> None:
    """A release after the unknown_outcome charge refunds it: a zero-cost ``released_late`` row, once."""
    rid = _reserve(ledger, _sent("k1", 400))
    ledger.expire(T0 + _after(TTL_S))
    late = T0 + _after(TTL_S + 5)
    assert ledger.release(rid, late).code is Code.RELEASED
    assert ledger.release(rid, late).code is Code.ALREADY_SETTLED
    assert ledger.settle(rid, USAGE, 150, late).code is Code.ALREADY_SETTLED
    account = account_of(ledger, BUDGET, AGENT_SCOPE)
    assert (account.settled_mc, account.reserved_mc) == (0, 0)
    [record] = list(ledger.usage_records())
    assert (record.cost_mc, record.outcome) == (0, "released_late")
    assert reconcile(ledger.ledger_snapshot()) == []


@pytest.mark.parametrize("op", ["settle", "release"])
def test_an_outcome_arriving_after_the_lease_ran_out_is_charged_once(ledger: LedgerStore, op: str) -> None:
    """A settle or release past a sent lease's expiry, with no sweep between, charges the real cost once."""
    rid = _reserve(ledger, _sent("k1", 400))
    late = T0 + _after(TTL_S + 1)
    if op == "settle":
        assert ledger.settle(rid, USAGE, 150, late).code is Code.SETTLED_LATE
    else:
        assert ledger.release(rid, late).code is Code.RELEASED
    expected = 150 if op == "settle" else 0
    account = account_of(ledger, BUDGET, AGENT_SCOPE)
    assert (account.settled_mc, account.reserved_mc) == (expected, 0)
    assert [r.cost_mc for r in ledger.usage_records()] == [expected]
    assert len(ledger.events("unknown_outcome")) == 1
    assert reconcile(ledger.ledger_snapshot()) == []


def test_unknown_outcome_charges_never_overshoot_the_limit(ledger: LedgerStore) -> None:
    """Holds filling the budget, all expired as unknown outcomes, leave settled + reserved <= limit."""
    ids = [_reserve(ledger, _sent(f"k{i}", 250)) for i in range(4)]
    assert ledger.reserve(_sent("k-over", 1), T0).code is Code.BUDGET_EXCEEDED
    assert ledger.expire(T0 + _after(TTL_S)) == len(ids)
    account = account_of(ledger, BUDGET, AGENT_SCOPE)
    assert (account.settled_mc, account.reserved_mc) == (LIMIT_MC, 0)
    assert ledger.reserve(_sent("k-after", 1), T0 + _after(TTL_S)).code is Code.BUDGET_EXCEEDED
    assert_accounts_within_limits(ledger.accounts())


def test_renew_keeps_a_lease_alive_past_its_first_expiry(ledger: LedgerStore) -> None:
    """A renewed lease survives its original expiry and expires ``ttl_s`` after the last renewal."""
    rid = _reserve(ledger, _sent("k1", 400))
    assert ledger.renew(rid, T0 + _after(TTL_S - 10), TTL_S)
    assert ledger.expire(T0 + _after(TTL_S + 1)) == 0
    reservation = ledger.reservation(rid)
    assert reservation is not None and reservation.state is ReservationState.PENDING
    assert reservation.expires_at == T0 + _after(2 * TTL_S - 10)
    assert ledger.settle(rid, USAGE, 150, T0 + _after(2 * TTL_S - 11)).code is Code.SETTLED
    account = account_of(ledger, BUDGET, AGENT_SCOPE)
    assert (account.settled_mc, account.reserved_mc) == (150, 0)


def test_renew_never_shortens_a_lease(ledger: LedgerStore) -> None:
    """A renewal asking for less than the lease has left keeps the later expiry."""
    rid = _reserve(ledger, _sent("k1", 400))
    assert ledger.renew(rid, T0 + _after(1), 5.0)
    reservation = ledger.reservation(rid)
    assert reservation is not None and reservation.expires_at == T0 + _after(TTL_S)


@pytest.mark.parametrize("end", ["settled", "released", "expired", "unknown"])
def test_renew_answers_false_once_the_lease_is_resolved(ledger: LedgerStore, end: str) -> None:
    """Renewing a settled, released, expired or unknown reservation changes nothing and answers False."""
    rid = _reserve(ledger, _sent("k1", 400))
    at = T0 + _after(1)
    if end == "settled":
        ledger.settle(rid, USAGE, 150, at)
    elif end == "released":
        ledger.release(rid, at)
    elif end == "expired":
        at = T0 + _after(TTL_S)
    else:
        rid = "no-such-reservation"
    before = account_of(ledger, BUDGET, AGENT_SCOPE)
    assert ledger.renew(rid, at, TTL_S) is False
    after = account_of(ledger, BUDGET, AGENT_SCOPE)
    if end == "expired":  # the renewal found it due and resolved it as the sweep does
        assert (after.settled_mc, after.reserved_mc) == (400, 0)
    else:
        assert (after.settled_mc, after.reserved_mc) == (before.settled_mc, before.reserved_mc)


@pytest.mark.parametrize("ttl_s", [0.0, -1.0, 86_401.0])
def test_renew_refuses_a_lease_length_out_of_range(ledger: LedgerStore, ttl_s: float) -> None:
    """A renewal for a non-positive or over-long lease is a ValueError naming ``ttl_s``."""
    rid = _reserve(ledger, _sent("k1", 400))
    with pytest.raises(ValueError, match="ttl_s"):
        ledger.renew(rid, T0, ttl_s)


def test_sends_is_not_part_of_the_idempotency_comparison(ledger: LedgerStore) -> None:
    """A retry of a sent reservation's key without the flag gets the first reservation back."""
    rid = _reserve(ledger, _sent("k1", 400))
    again = ledger.reserve(reserve_request("k1", 400, ttl_s=TTL_S), T0)
    assert again.code is Code.ALREADY_RESERVED and again.reservation is not None
    assert again.reservation.id == rid and again.reservation.sent


def test_a_version_2_sqlite_ledger_gains_the_sent_column_when_opened(tmp_path: Path) -> None:
    """Opening a ledger file made before ``sent`` existed adds the column; its old leases count as unsent."""
    path = tmp_path / "old.db"
    store = SQLiteStore(path)
    store.put_budget(BUDGET)
    rid = _reserve(store, reserve_request("k1", 400, ttl_s=TTL_S))
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE reservations DROP COLUMN sent")
    reopened = SQLiteStore(path)
    try:
        assert reopened.expire(T0 + _after(TTL_S)) == 1
        reservation = reopened.reservation(rid)
        assert reservation is not None and reservation.state is ReservationState.EXPIRED
        sent = _reserve(reopened, replace(_sent("k2", 400), ttl_s=TTL_S))
        found = reopened.reservation(sent)
        assert found is not None and found.sent
    finally:
        reopened.close()
