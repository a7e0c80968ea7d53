"""The PostgreSQL ledger: one truth for many gateway replicas on many hosts.

Every write is one transaction at READ COMMITTED in which the rows it changes are
locked with ``SELECT ... FOR UPDATE`` before they are read for a decision, always
in one global order, so two transactions never wait on each other in a cycle:

1. reservation rows (settle, release, the expiry sweep; the sweep takes them with
   ``FOR UPDATE SKIP LOCKED``, so replicas sweeping at once split the work and none
   waits on a lease another is settling);
2. account rows, in ascending ``id`` (PostgreSQL locks the rows of a sorted
   ``SELECT ... ORDER BY ... FOR UPDATE`` in that order: docs, "The Locking Clause");
   a sharded account's row only on the slow path (below);
3. defense state rows, in ascending ``(kind, key)`` (``StateKey`` order);
4. escrow shard rows, in ascending ``(account, shard)`` (the server functions
   ``escrow_hold`` and ``escrow_apply`` loop in that order).

No hot row: a namespace's and a tenant's accounts are split into escrow shards
(:mod:`comptroller.domain.escrow`, :mod:`comptroller.storage.postgres_escrow`). A
reserve reads them without a lock and holds its ceiling on one shard with room in
its write; when every shard is dry or a limit changed, it rolls back and runs again
on the slow path, which locks the account rows and all their shards and rebalances.
A sharded account's row itself is locked only there, by an alert about to fire, and
by a charge past a hold (a ceiling miss, a late settle), which rebalances it.

Missing account rows are created (empty) in a short transaction of their own before
the reserve is retried, and the expiry sweep runs in its own transaction before the
operation that found a lease due, so no transaction ever takes a lock out of that
order. New state rows and a reservation whose idempotency key a concurrent reserve
took at the same moment end in a unique violation; the transaction is rolled back
and run again, at most 12 times (also on a serialization failure or a
deadlock, which the order above should make impossible).

Group commit: reserves and settles without a guard that a store's callers make at the same
moment go to the server as one batch, one call of ``ledger_reserve_batch`` /
``ledger_settle_batch`` (migration 0009) in one transaction with one commit, each item answered
on its own (:mod:`.postgres_batch`); what a batch leaves alone runs as below.

Round trips: a reserve or a settle without a guard is one statement in its own transaction,
a server function (``ledger_reserve``, ``ledger_settle``; migration 0008) that answers
``general`` outside its plain case; the general path sends its statements in libpq
pipeline mode, two round trips each way: read and lock (with the guard's states), then
the writes and ``COMMIT``. psycopg prepares a statement on its fifth use
(``prepare_threshold``, default 5); the server functions plan their statements once per
session (``plan_cache_mode = force_generic_plan``).

Modules: connections and retries :mod:`.postgres_pool`; statements :mod:`.postgres_sql`;
reserve :mod:`.postgres_reserve`; settle and release :mod:`.postgres_settle`; the expiry
sweep :mod:`.postgres_sweep`; escrow shards :mod:`.postgres_escrow`; rows
:mod:`.postgres_rows`; API keys :mod:`.postgres_keys`.

Failure: every connection problem (the server restarting, a broken connection, the
pool exhausted past ``pool_timeout_s``, a lock held past ``lock_timeout_s``) raises
:class:`LedgerUnavailableError`, so a call fails closed and is never admitted
unmetered. An operation that failed before it sent ``COMMIT`` wrote nothing and is
retried on a fresh connection (this heals stale pooled connections after a restart);
one that failed after may or may not have committed, and says so: retry it with the
same idempotency key (reserve) or reservation id (settle, release), which is safe.
The pool replaces broken connections by itself, so the store recovers when the
database is back.

Times are ``timestamptz`` (sessions run in UTC); money is ``bigint`` millicents; the
schema is created and upgraded only by :func:`comptroller.storage.migrations.upgrade`
(``comptroller db upgrade``), and checked when a store opens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from comptroller.domain import escrow
from comptroller.domain.budgets import Budget
from comptroller.domain.ledger import (
    AccountView,
    Event,
    ReleaseResult,
    Reservation,
    ReservationState,
    ReserveRequest,
    ReserveResult,
    SettleResult,
    UsageRecord,
    check_ttl_s,
)
from comptroller.domain.reconcile import AccountBalance, AccountRef, Charge, Hold, LedgerSnapshot
from comptroller.domain.state import AdmitGuard, GuardOutcome, SettleGuard, StateKey, StoredState
from comptroller.domain.usage import Usage
from comptroller.storage import postgres_escrow as pe
from comptroller.storage import postgres_settle
from comptroller.storage.postgres_batch import Batcher
from comptroller.storage.postgres_keys import PostgresKeyStore
from comptroller.storage.postgres_pool import Attempt, Database
from comptroller.storage.postgres_reserve import Reserver
from comptroller.storage.postgres_rows import (
    ACCOUNT_ROW,
    BUDGET_COLS,
    RES_COLS,
    USAGE_COLS,
    Conn,
    budget_of,
    event_row,
    record_of,
    redact,
    reservation_of,
    rollback,
    split_url,
    state_of,
)
from comptroller.storage.postgres_settle import SettleAnswer, SettleItem, commit
from comptroller.storage.postgres_sweep import SWEEP_BATCH, sweep

__all__ = ["PostgresKeyStore", "PostgresStore", "redact", "split_url"]


class PostgresStore:
    """A :class:`~comptroller.ports.LedgerStore` in a PostgreSQL database, shared by any number of processes.

    Args:
        url: a libpq URL, ``postgresql://user@host:5432/db``; pool options and
            ``escrow_shards`` may ride in its query (``?pool_max_size=32&escrow_shards=16``).
        schema: the schema holding the ledger (default: the server's ``search_path``).
        min_size: connections kept open.
        max_size: connections at most (one per concurrent operation).
        timeout_s: how long an operation waits for a free connection, seconds, before
            :class:`LedgerUnavailableError` ("pool exhausted").
        connect_timeout_s: how long one connection attempt may take, seconds.
        lock_timeout_s: how long a statement waits for a row lock, seconds, before the
            operation fails (no replica can stall the others for longer).
        statement_timeout_s: how long one statement may run, seconds.
        durable: True (the default) waits for each commit to reach the disk; False sets
            ``synchronous_commit = off``: a crash of the database server (not a restart)
            may then lose the last fraction of a second of commits, never corrupt them
            (PostgreSQL docs, "Asynchronous Commit"). For tests and benchmarks of CPU cost.
        escrow_shards: how many escrow shards (0..256) a new namespace or tenant account gets
            (:mod:`comptroller.domain.escrow`; 0 or 1: none, every reserve locks the
            account row). The count is kept in the account, so replicas configured
            differently still agree on it. BENCHMARKS.md ("PostgreSQL") has the measurement
            behind the default.
        batch_max: reserves (and settles) without a guard sent together in one transaction, at most, when
            this store's callers make them at the same moment (group commit; 0 or 1: each alone).

    Raises:
        ValueError: on an ``escrow_shards`` that is not a whole number in 0..256.
        SchemaVersionError: if the schema is behind (run ``comptroller db upgrade``) or ahead.
        LedgerUnavailableError: if the database cannot be reached within ``timeout_s``.
    """

    def __init__(self, url: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 16,
                 timeout_s: float = 5.0, connect_timeout_s: float = 5.0, lock_timeout_s: float = 10.0,
                 statement_timeout_s: float = 30.0, durable: bool = True, escrow_shards: int = 16,
                 batch_max: int = 32) -> None:
        conninfo, options = split_url(url)
        shards = options.get("escrow_shards", escrow_shards)
        if not 0 <= shards <= escrow.SHARDS_MAX or shards != int(shards):
            raise ValueError(f"escrow_shards must be a whole number in 0..{escrow.SHARDS_MAX}, got {shards!r}")
        self._db = Database(conninfo, options, schema=schema, min_size=min_size, max_size=max_size,
                            timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, lock_timeout_s=lock_timeout_s,
                            statement_timeout_s=statement_timeout_s, durable=durable)
        self.where = self._db.where
        self._reserver = Reserver(self._db, int(shards) if shards > 1 else 0, batch_max)
        self._settles: Batcher[SettleItem, SettleAnswer] | None = None
        if batch_max > 1:
            self._settles = Batcher(lambda items: postgres_settle.send_settles(self._db, items), max_items=batch_max,
                                    wait_s=self._db.timeout_s, alone=("alone", None))

    @property
    def batchers(self) -> tuple[Batcher[Any, Any] | None, Batcher[Any, Any] | None]:
        """The group commits of this store's reserves and of its settles (None: ``batch_max`` < 2): how many
        calls wait in each (``queued``), or a pause that gathers the calls made meanwhile into one batch."""
        return self._reserver.batcher, self._settles

    # budgets -----------------------------------------------------------------------------------

    def put_budget(self, budget: Budget) -> None:
        """Create or replace a budget (every replica sees it in its next reserve)."""
        row = (budget.id, str(budget.level), budget.scope, str(budget.period), budget.timezone, budget.limit_mc,
               json.dumps(list(budget.alert_thresholds_pct)))
        self._db.write(f"INSERT INTO budgets ({BUDGET_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                      "ON CONFLICT (id) DO UPDATE SET level = excluded.level, scope = excluded.scope, "
                      "period = excluded.period, timezone = excluded.timezone, limit_mc = excluded.limit_mc, "
                      "alerts = excluded.alerts RETURNING id", row)

    def delete_budget(self, budget_id: str) -> bool:
        """Delete a budget; True if it existed."""
        return bool(self._db.write("DELETE FROM budgets WHERE id = %s RETURNING id", (budget_id,)))

    def budgets(self) -> list[Budget]:
        """Every budget, ordered by id."""
        return [budget_of(r) for r in self._db.read(f"SELECT {BUDGET_COLS} FROM budgets ORDER BY id")]

    # expiry --------------------------------------------------------------------------------------

    def expire(self, now: datetime) -> int:
        """Return the holds of every lease expired at ``now``; the number this call expired.

        Safe on many replicas at once: each sweep takes due leases with ``FOR UPDATE
        SKIP LOCKED``, so every lease is expired by exactly one of them.
        """
        total = 0
        while True:
            done = self._db.run(lambda conn, _: sweep(conn, now, SWEEP_BATCH))
            total += done
            if done < SWEEP_BATCH:
                return total

    def renew(self, reservation_id: str, now: datetime, ttl_s: float) -> bool:
        """Extend a pending lease to ``now + ttl_s`` (never shorten it); False if it is resolved or expired
        (an expired one is then resolved by a sweep, as every backend does).

        Raises:
            ValueError: unless ``0 < ttl_s <= 86,400``.
            LedgerUnavailableError: if the database cannot answer (a renew is safe to repeat).
        """
        check_ttl_s(ttl_s)

        def op(conn: Conn, _: Attempt) -> bool:  # one idempotent statement: safe to run again after a lost link
            return conn.execute("UPDATE reservations SET expires_at = greatest(expires_at, %s) WHERE id = %s "
                                "AND state = 'pending' AND expires_at > %s RETURNING id",
                                (now + timedelta(seconds=ttl_s), reservation_id, now)).fetchone() is not None

        if self._db.run(op):
            return True
        self.expire(now)
        return False

    def rebalance_escrow(self) -> int:
        """Re-split every sharded account's headroom evenly over its shards, from its budget's current limit.

        Never needed for correctness (a reserve that finds every shard dry, or a stale limit,
        rebalances by itself); an operator may run it after changing many limits. Safe at any
        moment: it takes the accounts' locks. Returns how many accounts it rebalanced.

        Raises:
            LedgerUnavailableError: if the database cannot answer (safe to repeat).
        """
        def op(conn: Conn, attempt: Attempt) -> int:
            conn.execute("BEGIN")
            done = pe.rebalance_all(conn)
            attempt.commit_sent = True
            conn.execute("COMMIT")
            return done

        return self._db.run(op)

    # reserve, settle, release ---------------------------------------------------------------------

    def reserve(self, request: ReserveRequest, now: datetime, guard: AdmitGuard | None = None) -> ReserveResult:
        """Answer a known key; else run the guard, then the budgets; hold the ceiling on every account or refuse.

        Raises:
            LedgerUnavailableError: if the database cannot answer (the call must be refused).
        """
        return self._reserver.reserve(request, now, guard)

    def settle(self, reservation_id: str, usage: Usage, cost_mc: int, now: datetime,
               guard: SettleGuard | None = None) -> SettleResult:
        """Charge the actual cost once (millicents), return the rest of the hold, append one usage row.

        Raises:
            LedgerUnavailableError: if the database cannot answer; retry with the same
                reservation id (a repeat answers ``already_settled`` and charges nothing).
        """
        foreseen = self._reserver.foresee(reservation_id, guard)
        general = False
        if guard is None and self._settles is not None:
            item = SettleItem(reservation_id, usage, cost_mc, now)
            answer = self._settles.submit(item)
            done = postgres_settle.batched(item, answer)
            if done is not None:
                return done
            general = answer[0] == "general"
        return postgres_settle.settle(self._db, reservation_id, usage, cost_mc, now, guard=guard,
                                      foreseen=foreseen, general=general)

    def release(self, reservation_id: str, now: datetime, guard: SettleGuard | None = None) -> ReleaseResult:
        """Return the whole hold once (the call failed or was abandoned).

        Raises:
            LedgerUnavailableError: if the database cannot answer; retry with the same reservation id.
        """
        return postgres_settle.release(self._db, reservation_id, now, guard=guard,
                                       foreseen=self._reserver.foresee(reservation_id, guard))

    def reservation(self, reservation_id: str) -> Reservation | None:
        """One reservation by id, or None."""
        rows = self._db.read(f"SELECT {RES_COLS} FROM reservations WHERE id = %s", (reservation_id,))
        return reservation_of(rows[0]) if rows else None

    # reads ---------------------------------------------------------------------------------------

    def accounts(self) -> list[AccountView]:
        """Every account with its money (accounts of deleted budgets are left out)."""
        rows = self._db.read(
            f"SELECT x.*, b.id, b.level, b.scope, b.period, b.timezone, b.limit_mc, b.alerts "
            f"FROM ({pe.ACCOUNT_SELECT}) AS x JOIN budgets b ON b.id = x.budget_id "
            "ORDER BY b.id, x.scope, x.period_key")
        return [AccountView(budget_of(r[ACCOUNT_ROW:]), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def usage_records(self) -> Iterator[UsageRecord]:
        """The usage log in settle order."""
        return (record_of(r) for r in self._db.read(f"SELECT {USAGE_COLS} FROM usage_log ORDER BY id"))

    def ledger_snapshot(self) -> LedgerSnapshot:
        """Every account (deleted budgets' too), reservation and usage charge, read in one snapshot."""
        def op(conn: Conn, _: Attempt) -> LedgerSnapshot:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            accounts = conn.execute(f"{pe.ACCOUNT_SELECT} ORDER BY a.id").fetchall()
            holds = conn.execute("SELECT id, state, ceiling_mc, account_ids FROM reservations ORDER BY id").fetchall()
            charges = conn.execute("SELECT reservation_id, cost_mc FROM usage_log ORDER BY id").fetchall()
            conn.execute("COMMIT")
            refs = {r[0]: AccountRef(r[1], r[2], r[3]) for r in accounts}
            missing = AccountRef("?", "?", "?")
            return LedgerSnapshot(
                balances=tuple(AccountBalance(refs[r[0]], r[4], r[5]) for r in accounts),
                holds=tuple(Hold(r[0], ReservationState(r[1]), r[2],
                                 tuple(refs.get(i, replace(missing, scope=f"account id {i}")) for i in r[3]))
                            for r in holds),
                charges=tuple(Charge(r[0], r[1]) for r in charges))
        return self._db.run(op)

    # defense state -------------------------------------------------------------------------------

    def state(self, key: StateKey) -> StoredState | None:
        """One defense state, or None if it was never written."""
        rows = self._db.read("SELECT kind, key, version, record FROM states WHERE kind = %s AND key = %s",
                             (key.kind, key.key))
        return state_of(rows[0]) if rows else None

    def states(self, kind: str) -> list[StoredState]:
        """Every state of one kind, ordered by key."""
        return [state_of(r) for r in self._db.read(
            "SELECT kind, key, version, record FROM states WHERE kind = %s ORDER BY key", (kind,))]

    def put_state(self, state: StoredState, expected_version: int, events: Sequence[Event] = ()) -> bool:
        """Compare-and-set: write ``state`` and ``events`` iff the stored version is ``expected_version``."""
        record = json.dumps(dict(state.record), sort_keys=True)

        def op(conn: Conn, attempt: Attempt) -> bool:
            conn.execute("BEGIN")
            if expected_version == 0:
                cur = conn.execute("INSERT INTO states (kind, key, version, record) VALUES (%s, %s, %s, %s) "
                                   "ON CONFLICT DO NOTHING", (state.key.kind, state.key.key, state.version, record))
            else:
                cur = conn.execute("UPDATE states SET version = %s, record = %s WHERE kind = %s AND key = %s "
                                   "AND version = %s", (state.version, record, state.key.kind, state.key.key,
                                                        expected_version))
            if cur.rowcount != 1:
                rollback(conn)
                return False
            commit(conn, attempt, GuardOutcome(events=tuple(events)), {})
            return True

        return self._db.run(op)

    # events --------------------------------------------------------------------------------------

    def record_event(self, event: Event) -> None:
        """Append an event."""
        self._db.write("INSERT INTO events (ts, kind, code, level, scope, detail) VALUES (%s, %s, %s, %s, %s, %s) "
                      "RETURNING id", event_row(event))

    def events(self, kind: str | None = None) -> list[Event]:
        """Events in time order, optionally of one kind."""
        rows = self._db.read("SELECT ts, kind, code, level, scope, detail FROM events "
                             "WHERE %s::text IS NULL OR kind = %s ORDER BY id", (kind, kind))
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def close(self) -> None:
        """Close every pooled connection."""
        self._db.close()
