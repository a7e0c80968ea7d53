"""Settle and release on the PostgreSQL ledger: resolve a hold exactly once.

A settle without a guard is first tried as one statement, the server function
``ledger_settle`` (migration 0008): pending, not due, no alert to fire, no charge past a
sharded hold. Anything else, and every settle with a guard, takes the general path: lock
the reservation, then its unsharded accounts (ascending id) and the guard states foreseen
from this process's own reserve, in one round trip; run the guard; then send the guard's
writes, the money move, the usage row and ``COMMIT`` in a second (:func:`commit`). Locks
follow the store's global order: reservations, accounts, defense states, shards.

Group commit: the store hands settles without a guard to its :class:`~.postgres_batch.Batcher`
(:class:`SettleItem`); :func:`send_settles` sends a batch as one call of ``ledger_settle_batch``
(migration 0009) and :func:`batched` reads an item's answer. An item the batch leaves alone
runs :func:`settle` by itself, which decides it exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

import psycopg
from psycopg.rows import TupleRow

from comptroller.domain.codes import Code
from comptroller.domain.ledger import (
    Event,
    ReleaseResult,
    Reservation,
    ReservationState,
    SettleResult,
    UsageRecord,
)
from comptroller.domain.state import GuardOutcome, SettleGuard, StateKey, StoredState
from comptroller.domain.usage import Usage
from comptroller.storage import postgres_escrow as pe
from comptroller.storage.postgres_pool import Attempt, Database
from comptroller.storage.postgres_rows import (
    RES_N,
    USAGE_COLS,
    Conn,
    alerts_crossed,
    insert_events,
    key_columns,
    record_of,
    reservation_of,
    rollback,
    scalar,
    state_of,
    usage_row,
    write_state,
)
from comptroller.storage.postgres_sql import (
    CORRECT_WRITE,
    DUE,
    FIRE_ALERTS,
    LOCK_STATES,
    SETTLE_BATCH,
    SETTLE_ONE_TRIP,
    SETTLE_READ,
    SETTLE_WRITE,
)
from comptroller.storage.postgres_sweep import sweep_first
from comptroller.storage.rows import corrected_record, settled_record, unknown_outcome_event

__all__ = ["Found", "SettleAnswer", "SettleItem", "batched", "commit", "release", "send_settles", "settle"]


class Found(NamedTuple):
    """A locked reservation: whether its lease is due, its accounts (in its order, with totals and budgets), and
    where its money sits on each."""

    reservation: Reservation
    due: bool
    accounts: list[TupleRow]
    holds: list[pe.Move]
    states: dict[StateKey, StoredState]
    """The guard states locked with the reservation (the keys foreseen from this process's own reserve)."""
    locked: frozenset[StateKey]


class SettleItem(NamedTuple):
    """A settle without a guard waiting for its batch: reservation id, usage, cost (millicents), time (UTC)."""

    reservation_id: str
    usage: Usage
    cost_mc: int
    now: datetime


SettleAnswer = tuple[str, TupleRow | None]
"""One item's answer: ``("settled", the reservation's RES_COLS row as it was)``, ``("general", None)`` (not the
plain case: nothing written) or ``("alone", None)`` (the batch did not decide it)."""


def send_settles(db: Database, items: Sequence[SettleItem]) -> list[SettleAnswer]:
    """Send a batch of settles as one call of ``ledger_settle_batch``; one answer per item.

    A batch that failed on a statement error (nothing was written) answers ``alone`` for every item.

    Raises:
        LedgerUnavailableError: if the database cannot answer; each item may be retried with its
            reservation id (a repeat answers ``already_settled``).
    """
    if len(items) == 1:  # the one-item function costs the server less than a batch of one
        return [_send_one(db, items[0])]
    usages = [it.usage for it in items]
    params = (max(it.now for it in items), [it.now for it in items], [it.reservation_id for it in items],
              [it.cost_mc for it in items], [u.input_tokens for u in usages], [u.output_tokens for u in usages],
              [u.cache_read_tokens for u in usages], [u.cache_write_tokens for u in usages],
              [u.cache_write_1h_tokens for u in usages])

    def op(conn: Conn, attempt: Attempt) -> list[TupleRow]:
        attempt.commit_sent = True  # one statement in its own transaction: once sent, it may have committed
        return conn.execute(SETTLE_BATCH, params).fetchall()

    try:
        rows = db.run(op)
    except psycopg.Error:  # an item's values failed a statement: nothing was written
        return [("alone", None)] * len(items)
    by_item = {row[0]: row[1:] for row in rows}
    return [("settled", by_item[n]) if n in by_item else ("general", None) for n in range(1, len(items) + 1)]


def _send_one(db: Database, item: SettleItem) -> SettleAnswer:
    """Send one settle as a call of ``ledger_settle`` (its answer has the batch's shape)."""
    u = item.usage
    params = (item.reservation_id, item.now, item.cost_mc, u.input_tokens, u.output_tokens, u.cache_read_tokens,
              u.cache_write_tokens, u.cache_write_1h_tokens)

    def op(conn: Conn, attempt: Attempt) -> TupleRow | None:
        attempt.commit_sent = True  # one statement in its own transaction: once sent, it may have committed
        return conn.execute(SETTLE_ONE_TRIP, params).fetchone()

    try:
        row = db.run(op)
    except psycopg.Error:  # a value failed the statement: nothing was written
        return ("alone", None)
    return ("settled", row[1:]) if row is not None and row[0] == "settled" else ("general", None)


def batched(item: SettleItem, answer: SettleAnswer) -> SettleResult | None:
    """The result of a settle its batch made; None when it must run alone (:func:`settle`)."""
    status, row = answer
    if status != "settled" or row is None:
        return None
    return SettleResult(Code.SETTLED, settled_record(reservation_of(row), item.usage, item.cost_mc, item.now,
                                                     late=False))


def commit(conn: Conn, attempt: Attempt, outcome: GuardOutcome, read: Mapping[StateKey, StoredState],
           writes: Callable[[], None] | None = None) -> None:
    """Send the guard's state writes and events, the ledger writes, and ``COMMIT``, in one round trip.

    The ledger writes go last, so when ``escrow_hold`` finds every shard dry only ``COMMIT`` follows
    the error, and it is never a prepared statement: psycopg 3.3 counts a statement it prepares
    inside a pipeline as prepared even when an earlier error made the server skip it, and its
    next use then fails ("prepared statement ... does not exist").
    """
    attempt.commit_sent = True
    with conn.pipeline():
        for state in sorted(outcome.writes, key=lambda s: s.key):
            write_state(conn, state, read.get(state.key))
        insert_events(conn, outcome.events)
        if writes is not None:
            writes()
        conn.execute("COMMIT", prepare=False)


def settle(db: Database, reservation_id: str, usage: Usage, cost_mc: int, now: datetime, *,
           guard: SettleGuard | None, foreseen: Sequence[StateKey], general: bool = False) -> SettleResult:
    """Charge the actual cost once (millicents), return the rest of the hold, append one usage row.

    ``foreseen``: guard state keys to lock with the reservation (``PostgresStore.settle`` knows them
    for the reservations it made); ``general``: skip the one-trip function (a batch found this settle
    outside its plain case).

    Raises:
        LedgerUnavailableError: if the database cannot answer; retry with the same
            reservation id (a repeat answers ``already_settled`` and charges nothing).
    """
    def op(conn: Conn, attempt: Attempt) -> SettleResult:
        if guard is None and not attempt.general:
            attempt.commit_sent = True  # one statement in its own transaction: once sent, it may have committed
            row = conn.execute(SETTLE_ONE_TRIP, (
                reservation_id, now, cost_mc, usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                usage.cache_write_tokens, usage.cache_write_1h_tokens)).fetchone()
            if row is not None and row[0] == "settled":
                record = settled_record(reservation_of(row[1:]), usage, cost_mc, now, late=False)
                return SettleResult(Code.SETTLED, record)
            attempt.general = True  # not its plain case, and nothing was written
            attempt.commit_sent = False
        found = _lock_reservation(conn, attempt, reservation_id, now, foreseen)
        if found is None:
            rollback(conn)
            return SettleResult(Code.RESERVATION_NOT_FOUND)
        reservation, due = found.reservation, found.due
        if reservation.state is ReservationState.SETTLED:
            usage_row = conn.execute(f"SELECT {USAGE_COLS} FROM usage_log WHERE reservation_id = %s",
                                     (reservation_id,)).fetchone()
            rollback(conn)
            return SettleResult(Code.ALREADY_SETTLED, None if usage_row is None else record_of(usage_row))
        record, events = _resolve(conn, attempt, found, usage, cost_mc=cost_mc, now=now, guard=guard)
        late = reservation.state is not ReservationState.PENDING or due
        return SettleResult(Code.SETTLED_LATE if late else Code.SETTLED, record, events)

    return db.run(op, Attempt(general=general))

def _resolve(conn: Conn, attempt: Attempt, found: Found, usage: Usage | None, *, cost_mc: int,
             now: datetime, guard: SettleGuard | None) -> tuple[UsageRecord, tuple[Event, ...]]:
    """Charge a locked reservation ``cost_mc`` (``usage`` None: a release of a sent call, zero) and commit.

    A pending reservation gets its usage row; an ``unknown_outcome`` one has its ceiling charge
    corrected (its row rewritten); a sent one whose lease is due is first charged its ceiling as
    the sweep would have done (its event), then corrected in the same transaction. The money
    moves on the rows or shards the hold names; a charge past the hold (a ceiling miss, a late
    settle) rebalances the sharded accounts in the same transaction (:func:`escrow.rebalance`).
    """
    reservation, due, accounts, holds = found.reservation, found.due, found.accounts, found.holds
    unknown = reservation.state is ReservationState.UNKNOWN_OUTCOME
    swept = [unknown_outcome_event(reservation, now)] if due and reservation.sent else []
    if unknown:
        record = corrected_record(reservation, usage, cost_mc, now)
        delta, held = cost_mc - reservation.ceiling_mc, 0
    else:
        late = reservation.state is not ReservationState.PENDING or due
        record = (corrected_record(reservation, None, 0, now) if usage is None
                  else settled_record(reservation, usage, cost_mc, now, late=late))
        delta = cost_mc
        held = reservation.ceiling_mc if reservation.state is ReservationState.PENDING else 0
    events, fired = alerts_crossed(accounts, delta, now)
    sharded = sorted(r[0] for r in accounts if r[pe.ACCOUNT_SHARDS] > 0)
    pushed = delta > held and bool(sharded)
    if pushed or set(fired) & set(sharded):  # lock them: alerts fire once, a rebalance needs the caps
        fresh: dict[int, int] = dict(conn.execute(
            "SELECT id, alert_pct_fired FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            (sharded,)).fetchall())
        accounts = [(*r[:6], fresh.get(r[0], r[6]), *r[7:]) for r in accounts]
        events, fired = alerts_crossed(accounts, delta, now)
    outcome, read = _settle_guard(conn, guard, found, None if usage is None else cost_mc, now)
    moves = {where: (delta, -held) for where in holds}
    plans = pe.recapped(conn, accounts, moves) if pushed else {}

    def write() -> None:
        pe.write_caps(conn, plans)
        if fired:
            conn.execute(FIRE_ALERTS, (list(fired), list(fired.values())))
        if unknown:
            pe.apply(conn, moves)
            u = record.usage
            conn.execute(CORRECT_WRITE, (now, u.input_tokens, u.output_tokens, u.cache_read_tokens,
                                          u.cache_write_tokens, u.cache_write_1h_tokens, cost_mc, record.outcome,
                                          reservation.id, reservation.id))
        else:
            conn.execute(SETTLE_WRITE, (*pe.apply_params(moves), *usage_row(record), reservation.id))
        insert_events(conn, [*swept, *events])

    commit(conn, attempt, outcome, read, write)
    return record, (*events, *outcome.events)

def release(db: Database, reservation_id: str, now: datetime, *, guard: SettleGuard | None,
            foreseen: Sequence[StateKey]) -> ReleaseResult:
    """Return the whole hold once (the call failed or was abandoned); ``foreseen`` as for :func:`settle`.

    Raises:
        LedgerUnavailableError: if the database cannot answer; retry with the same reservation id.
    """
    def op(conn: Conn, attempt: Attempt) -> ReleaseResult:
        found = _lock_reservation(conn, attempt, reservation_id, now, foreseen)
        if found is None:
            rollback(conn)
            return ReleaseResult(Code.RESERVATION_NOT_FOUND)
        reservation, due = found.reservation, found.due
        if reservation.state is ReservationState.SETTLED:
            rollback(conn)
            return ReleaseResult(Code.ALREADY_SETTLED)
        if reservation.state is ReservationState.UNKNOWN_OUTCOME or (due and reservation.sent):
            return ReleaseResult(Code.RELEASED, _resolve(conn, attempt, found, None, cost_mc=0, now=now,
                                                           guard=guard)[1])
        if reservation.state is not ReservationState.PENDING:
            rollback(conn)
            return ReleaseResult(Code.ALREADY_RELEASED)

        def unhold(state: str) -> Callable[[], None]:
            def writes() -> None:
                pe.apply(conn, {where: (0, -reservation.ceiling_mc) for where in found.holds})
                conn.execute("UPDATE reservations SET state = %s WHERE id = %s", (state, reservation_id))
            return writes

        if due:  # its lease ran out before this release: it expires, as the sweep would have done
            commit(conn, attempt, GuardOutcome(), {}, unhold("expired"))
            return ReleaseResult(Code.ALREADY_RELEASED)
        outcome, read = _settle_guard(conn, guard, found, None, now)
        commit(conn, attempt, outcome, read, unhold("released"))
        return ReleaseResult(Code.RELEASED, outcome.events)

    return db.run(op)

def _lock_reservation(conn: Conn, attempt: Attempt, reservation_id: str, now: datetime,
                      state_keys: Sequence[StateKey] = ()) -> Found | None:
    """Lock one reservation and then its unsharded accounts (ascending id); read its sharded ones; None if
    unknown. ``due`` is True when it is still pending but its lease has run out. ``state_keys``: guard
    states to lock and read in the same round trip (after the accounts, in the global order)."""
    with conn.pipeline():
        conn.execute("BEGIN")
        res = conn.execute(SETTLE_READ, (now, reservation_id))
        states = conn.execute(LOCK_STATES, key_columns(state_keys)) if state_keys else None
    rows = res.fetchall()
    read = {} if states is None else {StateKey(r[0], r[1]): state_of(r) for r in states.fetchall()}
    row = rows[0] if rows else None
    if row is None:
        if scalar(conn.execute(f"SELECT {DUE}", (now,))):
            sweep_first(conn, attempt, now)  # expire every due lease first, as the model does
        return None
    if row[RES_N]:  # the due flag
        sweep_first(conn, attempt, now)
    reservation = reservation_of(row)
    first = RES_N + 2
    by_id = {r[first]: r[first:] for r in rows if r[first] is not None}
    held = [by_id[i] for i in row[15] if i in by_id]  # in the reservation's order: alerts fire in it
    due_self = reservation.state is ReservationState.PENDING and reservation.expires_at <= now
    return Found(reservation, due_self, held, pe.holds(row[15], row[RES_N + 1]), read, frozenset(state_keys))

def _settle_guard(conn: Conn, guard: SettleGuard | None, found: Found, cost_mc: int | None,
                  now: datetime) -> tuple[GuardOutcome, dict[StateKey, StoredState]]:
    """Read the guard's states (locked after the accounts; unless locked with the reservation, one more
    round trip), then run it."""
    if guard is None:
        return GuardOutcome(), {}
    reservation = found.reservation
    keys = list(guard.state_keys(reservation))
    if found.locked.issuperset(keys):
        read = {k: found.states[k] for k in keys if k in found.states}
    else:
        rows = conn.execute(LOCK_STATES, key_columns(keys)).fetchall() if keys else []
        read = {StateKey(r[0], r[1]): state_of(r) for r in rows}
    return guard.apply(reservation, cost_mc, read, now), read
