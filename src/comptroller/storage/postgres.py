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
and run again, at most :data:`_ATTEMPTS` times (also on a serialization failure or a
deadlock, which the order above should make impossible).

Round trips: statements are sent in libpq pipeline mode, and the reads of each step are
one statement (the accounts are read, and the unsharded ones locked, in a ``LATERAL``
subquery beside the other reads), so a reserve is two round trips and four statements
(begin, read and lock, the hold with ``escrow_hold``, commit; guard states add one
each way), and a settle the same (begin, read and lock, one write moving the money,
logging the usage and resolving the hold, commit; three round trips with a guard).
psycopg prepares a statement on its fifth use (``prepare_threshold``, default 5).

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
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from comptroller.domain import escrow
from comptroller.domain.admission import account_keys, decide, remaining_after
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Verdict
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
from comptroller.domain.scopes import Level
from comptroller.domain.state import AdmitGuard, GuardOutcome, SettleGuard, StateKey, StoredState
from comptroller.domain.usage import Usage
from comptroller.errors import LedgerUnavailableError
from comptroller.storage import postgres_escrow as pe
from comptroller.storage.keys import ApiKey, key_id, match_key
from comptroller.storage.migrations import check_version
from comptroller.storage.postgres_rows import (
    ACCOUNT_ROW,
    BUDGET_COLS,
    KEY_COLS,
    RES_COLS,
    RES_N,
    USAGE_COLS,
    Conn,
    alerts_crossed,
    api_key_of,
    budget_of,
    event_row,
    insert_events,
    key_columns,
    record_of,
    redact,
    reservation_of,
    rollback,
    scalar,
    split_url,
    state_of,
    usage_row,
    why_not,
    write_state,
)
from comptroller.storage.postgres_sweep import sweep
from comptroller.storage.rows import (
    corrected_record,
    new_reservation,
    refusal_event,
    settled_record,
    unknown_outcome_event,
)

__all__ = ["PostgresKeyStore", "PostgresStore", "redact", "split_url"]

_T = TypeVar("_T")

_ATTEMPTS = 12
_SWEEP_BATCH = 500
_CACHE_ENTRIES_MAX = 100_000
_MADE_MAX = 10_000
"""Reservations a store remembers from its own reserves (for their settle's guard keys), at most."""
# psycopg_pool retries a lost connection after 1 s, doubling without a cap, so after an outage the
# first new connection could come many seconds late (issue 12: 11 s and 25 s). Giving up a retry
# series after 2 s lets the next waiting call start a fresh attempt at once instead.
_RECONNECT_TIMEOUT_S = 2.0
_SHARDED_LEVELS = frozenset({Level.NAMESPACE, Level.TENANT})

_BY_ID = "a.id = ANY(%s)"
_BY_KEY = "(a.budget_id, a.scope, a.period_key) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))"
_LOCK_ACCOUNTS = f"{pe.ACCOUNT_SELECT} WHERE {{}} AND (a.shards = 0 OR %s) ORDER BY a.id FOR UPDATE OF a"
"""The call's accounts locked (ascending id): the unsharded ones, and the sharded ones too when the flag is on."""
_READ_SHARDED = f"{pe.ACCOUNT_SELECT} WHERE {{}} AND a.shards > 0 AND NOT %s"
"""The call's sharded accounts with their totals, not locked (the fast path)."""
_READ_ACCOUNTS = f"SELECT * FROM ({_LOCK_ACCOUNTS}) AS l UNION ALL SELECT * FROM ({_READ_SHARDED}) AS u"
"""Both, in one statement (the unsharded ones first, locked)."""
_INSERT_HOLD = (f"INSERT INTO reservations ({RES_COLS}, shard_ids) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s, %s, %s, {})")
_SETTLE_WRITE = (f"WITH {pe.APPLY_CTE}, logged AS (INSERT INTO usage_log ({USAGE_COLS}) VALUES "
                 f"({', '.join(['%s'] * 21)})) UPDATE reservations SET state = 'settled' FROM moved WHERE id = %s")
"""Move the money, log the usage and mark the hold settled, in one statement."""
_CORRECT_WRITE = (
    "WITH logged AS (UPDATE usage_log SET resolved_at = %s, input_tokens = %s, output_tokens = %s, "
    "cache_read_tokens = %s, cache_write_tokens = %s, cache_write_1h_tokens = %s, cost_mc = %s, outcome = %s "
    "WHERE reservation_id = %s) UPDATE reservations SET state = 'settled' WHERE id = %s")
"""Correct an ``unknown_outcome`` ceiling charge to the real cost (its one usage row rewritten)."""
_FIRE_ALERTS = ("UPDATE accounts SET alert_pct_fired = f.pct FROM unnest(%s::bigint[], %s::integer[]) AS f(id, pct) "
                "WHERE accounts.id = f.id")
_LOCK_STATES = ("SELECT kind, key, version, record FROM states WHERE (kind, key) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY kind, key FOR UPDATE")
_RESERVE_ONE_TRIP = f"SELECT * FROM ledger_reserve({', '.join(['%s'] * 21)})"
_SETTLE_ONE_TRIP = "SELECT * FROM ledger_settle(%s, %s, %s, %s, %s, %s, %s, %s)"
_DUE = "EXISTS (SELECT 1 FROM reservations WHERE state = 'pending' AND expires_at <= %s)"
_RESERVE_READ = (f"SELECT m.*, a.* FROM (SELECT (SELECT value FROM meta WHERE key = 'budgets_version'), {_DUE}, "
                 "(SELECT id FROM reservations WHERE idempotency_key = %s)) AS m(version, due, existing) "
                 "LEFT JOIN LATERAL ({}) AS a ON true")
"""The budgets version, a due lease, a known key, then the call's accounts (one row each, or one empty)."""
_SETTLE_ACCOUNTS = ("SELECT x.*, b.id, b.level, b.scope, b.period, b.timezone, b.limit_mc, b.alerts FROM "
                    f"({pe.ACCOUNT_SELECT} WHERE {{}} ORDER BY a.id {{}}) AS x "
                    "LEFT JOIN budgets b ON b.id = x.budget_id ORDER BY x.id")
_SETTLE_READ = (
    f"SELECT r.*, x.* FROM (SELECT {RES_COLS}, {_DUE}, shard_ids FROM reservations WHERE id = %s FOR UPDATE) AS r "
    "LEFT JOIN LATERAL (SELECT * FROM ({}) AS l UNION ALL SELECT * FROM ({}) AS u) AS x ON true".format(
        _SETTLE_ACCOUNTS.format("a.id = ANY(r.account_ids) AND a.shards = 0", "FOR UPDATE OF a"),
        _SETTLE_ACCOUNTS.format("a.id = ANY(r.account_ids) AND a.shards > 0", "")))
"""The reservation locked, a due lease, where its money sits, then its accounts with their totals and budgets:
the unsharded ones locked (ascending id), the sharded ones not."""


class _Found(NamedTuple):
    """A locked reservation: whether its lease is due, its accounts (in its order, with totals and budgets), and
    where its money sits on each."""

    reservation: Reservation
    due: bool
    accounts: list[TupleRow]
    holds: list[pe.Move]
    states: dict[StateKey, StoredState]
    """The guard states locked with the reservation (the keys foreseen from this process's own reserve)."""
    locked: frozenset[StateKey]


class _RetryError(Exception):
    """Roll back and run the operation again (a conflict, new accounts, a due lease, new budgets)."""


@dataclass
class _Attempt:
    """What one try of an operation did so far."""

    commit_sent: bool = False
    swept: bool = False
    slow: bool = False
    """Lock the call's sharded accounts and their shards (a shard ran dry, or their caps are stale)."""
    general: bool = False
    """Skip the one-trip server function (it answered that this call is not its plain case)."""


@dataclass
class _Budgets:
    """Parsed budgets by exact ``(level, scope)``, valid for one ``meta.budgets_version``."""

    version: int | None = None
    by_scope: dict[tuple[str, str], tuple[Budget, ...]] = field(default_factory=dict)


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

    Raises:
        ValueError: on an ``escrow_shards`` that is not a whole number in 0..256.
        SchemaVersionError: if the schema is behind (run ``comptroller db upgrade``) or ahead.
        LedgerUnavailableError: if the database cannot be reached within ``timeout_s``.
    """

    def __init__(self, url: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 16,
                 timeout_s: float = 5.0, connect_timeout_s: float = 5.0, lock_timeout_s: float = 10.0,
                 statement_timeout_s: float = 30.0, durable: bool = True, escrow_shards: int = 16) -> None:
        conninfo, options = split_url(url)
        shards = options.get("escrow_shards", escrow_shards)
        if not 0 <= shards <= escrow.SHARDS_MAX or shards != int(shards):
            raise ValueError(f"escrow_shards must be a whole number in 0..{escrow.SHARDS_MAX}, got {shards!r}")
        self._shards = int(shards) if shards > 1 else 0
        self.where = redact(conninfo) + (f" (schema {schema})" if schema else "")
        self._timeout_s = options.get("timeout_s", timeout_s)
        self._settings = {"TimeZone": "UTC", "lock_timeout": f"{int(lock_timeout_s * 1000)}ms",
                          "statement_timeout": f"{int(statement_timeout_s * 1000)}ms",
                          "idle_in_transaction_session_timeout": f"{int(max(lock_timeout_s, 60.0) * 1000)}ms"}
        if not durable:
            self._settings["synchronous_commit"] = "off"
        self._schema = schema
        max_conns = int(options.get("max_size", max_size))
        self._pool = ConnectionPool(
            conninfo, min_size=min(int(options.get("min_size", min_size)), max_conns), max_size=max_conns,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout_s)),
                    **({} if "application_name=" in conninfo else {"application_name": "comptroller"})},
            configure=self._configure, timeout=self._timeout_s, open=False, name="comptroller-ledger",
            reconnect_timeout=_RECONNECT_TIMEOUT_S)
        self._budgets = _Budgets()
        self._account_ids: dict[tuple[str, str, str], tuple[int, int]] = {}
        """Account id and shard count by ``(budget id, scope, period key)``: neither ever changes."""
        self._made: dict[str, Reservation] = {}
        """Reservations made here and not yet resolved here, oldest first (:meth:`_foresee`)."""
        self._budgets_lock = threading.Lock()  # guards the caches
        self._pool.open(wait=False)
        try:
            self._run(lambda conn, _: check_version(conn, self.where))
        except LedgerUnavailableError as exc:
            self._pool.close()
            raise LedgerUnavailableError(f"{exc} ({why_not(conninfo, connect_timeout_s)})") from exc
        except BaseException:
            self._pool.close()
            raise

    def _configure(self, conn: Conn) -> None:
        for name, value in self._settings.items():
            conn.execute(sql.SQL("SET {} TO {}").format(sql.Identifier(name), sql.Literal(value)))
        if self._schema is not None:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))

    # connections and transactions ---------------------------------------------------------------

    def _unavailable(self, exc: Exception, *, outcome_unknown: bool = False) -> LedgerUnavailableError:
        if isinstance(exc, PoolTimeout):
            stats = self._pool.get_stats()
            message = (f"ledger {self.where} unavailable: no database connection within {self._timeout_s:g} s "
                       f"(pool of {self._pool.max_size}: {stats.get('pool_size', 0)} open, "
                       f"{stats.get('pool_available', 0)} free, {stats.get('requests_waiting', 0)} waiting); "
                       "the call is refused: retry later, or raise pool_max_size / pool_timeout_s")
        elif isinstance(exc, errors.LockNotAvailable | errors.QueryCanceled):
            message = (f"ledger {self.where} unavailable: a row stayed locked or a statement ran past its timeout "
                       f"({exc.__class__.__name__}); the call is refused: retry later")
        else:
            message = (f"ledger {self.where} unavailable: {exc.__class__.__name__}: "
                       f"{str(exc).strip() or 'connection lost'}; the call is refused: retry later")
        if outcome_unknown:
            message += (" (the database lost the connection while committing, so the operation may have been "
                        "applied: retry it with the same idempotency key or reservation id)")
        return LedgerUnavailableError(message, outcome_unknown=outcome_unknown)

    def _run(self, op: Callable[[Conn, _Attempt], _T]) -> _T:
        """Run ``op`` in a transaction on a pooled connection, again after a conflict; fail closed on I/O errors."""
        attempt = _Attempt()
        for n in range(_ATTEMPTS):
            attempt.commit_sent = False
            try:
                with self._pool.connection(timeout=self._timeout_s) as conn:
                    try:
                        return op(conn, attempt)
                    except (_RetryError, errors.UniqueViolation, errors.SerializationFailure, errors.DeadlockDetected):
                        rollback(conn)
            except PoolTimeout as exc:
                raise self._unavailable(exc) from exc
            except (errors.LockNotAvailable, errors.QueryCanceled) as exc:
                raise self._unavailable(exc, outcome_unknown=attempt.commit_sent) from exc
            except psycopg.OperationalError as exc:
                if attempt.commit_sent or n == _ATTEMPTS - 1:
                    raise self._unavailable(exc, outcome_unknown=attempt.commit_sent) from exc
                self._pool.check()  # drop the other stale connections, then try on a fresh one
                continue
            time.sleep(random.uniform(0, 0.002 * (n + 1)))
        raise LedgerUnavailableError(f"ledger {self.where}: the operation conflicted {_ATTEMPTS} times in a row; "
                                     "the call is refused: retry later")

    def _read(self, query: str | sql.Composed, params: Sequence[Any] = ()) -> list[TupleRow]:
        """Run one statement (its own transaction); its rows."""
        def op(conn: Conn, _: _Attempt) -> list[TupleRow]:
            return conn.execute(query, params).fetchall()
        return self._run(op)

    def _write(self, query: str, params: Sequence[Any] = ()) -> list[TupleRow]:
        """Run one writing statement (its own transaction): after a lost connection it is not
        run again, since it may have committed (the error says so)."""
        def op(conn: Conn, attempt: _Attempt) -> list[TupleRow]:
            attempt.commit_sent = True
            return conn.execute(query, params).fetchall()
        return self._run(op)

    # budgets -----------------------------------------------------------------------------------

    def put_budget(self, budget: Budget) -> None:
        """Create or replace a budget (every replica sees it in its next reserve)."""
        row = (budget.id, str(budget.level), budget.scope, str(budget.period), budget.timezone, budget.limit_mc,
               json.dumps(list(budget.alert_thresholds_pct)))
        self._write(f"INSERT INTO budgets ({BUDGET_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                   "ON CONFLICT (id) DO UPDATE SET level = excluded.level, scope = excluded.scope, "
                   "period = excluded.period, timezone = excluded.timezone, limit_mc = excluded.limit_mc, "
                   "alerts = excluded.alerts RETURNING id", row)

    def delete_budget(self, budget_id: str) -> bool:
        """Delete a budget; True if it existed."""
        return bool(self._write("DELETE FROM budgets WHERE id = %s RETURNING id", (budget_id,)))

    def budgets(self) -> list[Budget]:
        """Every budget, ordered by id."""
        return [budget_of(r) for r in self._read(f"SELECT {BUDGET_COLS} FROM budgets ORDER BY id")]

    def _candidates(self, conn: Conn, scopes: Sequence[tuple[Level, str]]) -> tuple[int, list[Budget]]:
        """The budgets set on the call's scopes or their level's ``*`` default, and the version they are from."""
        wanted = [(str(level), key) for level, key in scopes]
        wanted += [(str(level), ANY_SCOPE) for level, key in scopes if key != ANY_SCOPE]
        with self._budgets_lock:
            cache = self._budgets
            if cache.version is not None and all(w in cache.by_scope for w in wanted):
                return cache.version, [b for w in wanted for b in cache.by_scope[w]]
        version, loaded = self._load_budgets(conn, wanted)
        return version, [b for w in wanted for b in loaded[w]]

    def _load_budgets(self, conn: Conn, pairs: Sequence[tuple[str, str]]
                      ) -> tuple[int, dict[tuple[str, str], tuple[Budget, ...]]]:
        """Read the budgets of ``pairs`` and their version (on the operation's connection), and cache them."""
        with conn.pipeline():
            seen = conn.execute("SELECT value FROM meta WHERE key = 'budgets_version'")
            found = conn.execute(f"SELECT {BUDGET_COLS} FROM budgets WHERE (level, scope) IN "
                                 "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                                 ([p[0] for p in pairs], [p[1] for p in pairs]))
        version, rows = int(scalar(seen) or 0), found.fetchall()
        grouped: dict[tuple[str, str], list[Budget]] = {p: [] for p in pairs}
        for row in rows:
            grouped.setdefault((row[1], row[2]), []).append(budget_of(row))
        loaded = {k: tuple(v) for k, v in grouped.items()}
        with self._budgets_lock:
            cache = self._budgets
            if cache.version != version or len(cache.by_scope) >= _CACHE_ENTRIES_MAX:
                cache.by_scope.clear()
                cache.version = version
            cache.by_scope.update(loaded)
        return version, loaded

    def _forget_budgets(self) -> None:
        """Drop the cache: a budget changed since it was read."""
        with self._budgets_lock:
            self._budgets.version = None
            self._budgets.by_scope.clear()

    # expiry --------------------------------------------------------------------------------------

    def expire(self, now: datetime) -> int:
        """Return the holds of every lease expired at ``now``; the number this call expired.

        Safe on many replicas at once: each sweep takes due leases with ``FOR UPDATE
        SKIP LOCKED``, so every lease is expired by exactly one of them.
        """
        total = 0
        while True:
            done = self._run(lambda conn, _: sweep(conn, now, _SWEEP_BATCH))
            total += done
            if done < _SWEEP_BATCH:
                return total

    def renew(self, reservation_id: str, now: datetime, ttl_s: float) -> bool:
        """Extend a pending lease to ``now + ttl_s`` (never shorten it); False if it is resolved or expired
        (an expired one is then resolved by a sweep, as every backend does).

        Raises:
            ValueError: unless ``0 < ttl_s <= 86,400``.
            LedgerUnavailableError: if the database cannot answer (a renew is safe to repeat).
        """
        check_ttl_s(ttl_s)

        def op(conn: Conn, _: _Attempt) -> bool:  # one idempotent statement: safe to run again after a lost link
            return conn.execute("UPDATE reservations SET expires_at = greatest(expires_at, %s) WHERE id = %s "
                                "AND state = 'pending' AND expires_at > %s RETURNING id",
                                (now + timedelta(seconds=ttl_s), reservation_id, now)).fetchone() is not None

        if self._run(op):
            return True
        self.expire(now)
        return False

    def _sweep_first(self, conn: Conn, attempt: _Attempt, now: datetime) -> None:
        """A lease is due: roll back, sweep in a transaction of its own, and retry (once per operation)."""
        if not attempt.swept:
            rollback(conn)
            sweep(conn, now, _SWEEP_BATCH)
            attempt.swept = True
            raise _RetryError

    def rebalance_escrow(self) -> int:
        """Re-split every sharded account's headroom evenly over its shards, from its budget's current limit.

        Never needed for correctness (a reserve that finds every shard dry, or a stale limit,
        rebalances by itself); an operator may run it after changing many limits. Safe at any
        moment: it takes the accounts' locks. Returns how many accounts it rebalanced.

        Raises:
            LedgerUnavailableError: if the database cannot answer (safe to repeat).
        """
        def op(conn: Conn, attempt: _Attempt) -> int:
            conn.execute("BEGIN")
            done = pe.rebalance_all(conn)
            attempt.commit_sent = True
            conn.execute("COMMIT")
            return done

        return self._run(op)

    # reserve -------------------------------------------------------------------------------------

    def reserve(self, request: ReserveRequest, now: datetime, guard: AdmitGuard | None = None) -> ReserveResult:
        """Answer a known key; else run the guard, then the budgets; hold the ceiling on every account or refuse.

        Raises:
            LedgerUnavailableError: if the database cannot answer (the call must be refused).
        """
        scopes = request.attribution.scopes()
        state_keys = sorted(set(guard.state_keys())) if guard is not None else []

        def op(conn: Conn, attempt: _Attempt) -> ReserveResult:
            version, candidates = self._candidates(conn, scopes)
            keys = account_keys(scopes, candidates, now)
            wanted = [(b.id, s, p) for b, s, p in keys]
            if guard is None and not attempt.general and not attempt.slow:
                done = self._reserve_one_trip(conn, attempt, request, now, version=version, keys=keys)
                if done is not None:
                    return done
            where, params = self._account_filter(wanted)
            with conn.pipeline():
                conn.execute("BEGIN")
                first = conn.execute(_RESERVE_READ.format(_READ_ACCOUNTS.format(where, where)),
                                     (now, request.idempotency_key, *params, attempt.slow, *params, attempt.slow))
                states = conn.execute(_LOCK_STATES, key_columns(state_keys)) if state_keys else None
            rows = first.fetchall()
            seen, due, existing_id = rows[0][:3]
            if seen != version:
                self._forget_budgets()
                raise _RetryError
            if due:
                self._sweep_first(conn, attempt, now)
            if existing_id is not None:
                return self._known_key(conn, request, existing_id)
            by_key = self._learn_accounts([row[3:] for row in rows if row[3] is not None])
            if len(by_key) < len(set(wanted)):
                rollback(conn)
                missing = sorted(set(wanted) - set(by_key))
                with self._budgets_lock:  # a remembered id may be gone (a restored or truncated ledger)
                    for key in missing:
                        self._account_ids.pop(key, None)
                levels = {(b.id, s, p): b.level for b, s, p in keys}
                pe.create_accounts(conn, missing, [self._shards if levels[k] in _SHARDED_LEVELS else 0
                                                   for k in missing])
                raise _RetryError
            read = {} if states is None else {StateKey(r[0], r[1]): state_of(r) for r in states.fetchall()}
            held = [by_key[k] for k in wanted]
            locked: dict[int, list[escrow.Shard]] = {}
            if attempt.slow:
                locked = pe.lock_shards(conn, [r[0] for r in held if r[pe.ACCOUNT_SHARDS] > 0])
                held = [pe.with_shards(r, locked.get(r[0])) for r in held]
            elif any(r[pe.ACCOUNT_SHARDS] > 0 and r[pe.ACCOUNT_SHARDS + 1] != b.limit_mc
                     for r, (b, _, _) in zip(held, keys, strict=True)):
                rollback(conn)  # a limit changed since the caps were split: rebalance under the account's lock
                attempt.slow = True
                raise _RetryError
            views = [AccountView(b, s, p, *r[4:7]) for r, (b, s, p) in zip(held, keys, strict=True)]
            starts = [escrow.shard_order(request.idempotency_key, r[pe.ACCOUNT_SHARDS])[0]
                      if r[pe.ACCOUNT_SHARDS] > 0 else -1 for r in held]
            return self._admit(conn, attempt, request, now, guard=guard, views=views, ids=[r[0] for r in held],
                               read=read, starts=starts, locked=locked)

        return self._run(op)

    @staticmethod
    def _known_key(conn: Conn, request: ReserveRequest, existing_id: str) -> ReserveResult:
        """The answer to a reserve whose idempotency key a reservation already has."""
        row = conn.execute(f"SELECT {RES_COLS} FROM reservations WHERE id = %s", (existing_id,)).fetchone()
        rollback(conn)
        if row is None:
            raise _RetryError
        found = reservation_of(row)
        if request.same_request(found):
            return ReserveResult(Code.ALREADY_RESERVED, reservation=found)
        return ReserveResult(Code.IDEMPOTENCY_CONFLICT)

    def _reserve_one_trip(self, conn: Conn, attempt: _Attempt, request: ReserveRequest, now: datetime, *,
                          version: int, keys: Sequence[tuple[Budget, str, str]]) -> ReserveResult | None:
        """Reserve with no guard in one round trip (the server function ``ledger_reserve``, migration 0008).

        None when the call is not the function's plain case (an account it has not seen, caps to
        rebalance, every shard dry, a lease due after a sweep): the caller takes the general path.
        Raises :class:`_RetryError` after a budget change or a sweep.
        """
        with self._budgets_lock:
            known = [self._account_ids.get((b.id, s, p)) for b, s, p in keys]
        if any(k is None for k in known):
            return None
        ids = [k[0] for k in known if k is not None]
        starts = [escrow.shard_order(request.idempotency_key, k[1])[0] if k[1] > 0 else -1
                  for k in known if k is not None]
        reservation = new_reservation(uuid.uuid4().hex, request, now)
        a = request.attribution
        attempt.commit_sent = True  # one statement in its own transaction: once sent, it may have committed
        try:
            row = conn.execute(_RESERVE_ONE_TRIP, (
                version, now, ids, [b.limit_mc for b, _, _ in keys], starts, reservation.id,
                request.idempotency_key, a.namespace, a.tenant, a.agent, a.conversation, a.task, a.phase,
                request.model, request.ceiling_mc, request.input_tokens_max, request.output_tokens_max,
                reservation.expires_at, request.sends, a.conversation_shared, a.key_id)).fetchone()
        except errors.RaiseException as exc:
            if not pe.is_dry(exc):
                raise
            attempt.slow = True  # nothing was written: rebalance under the accounts' locks and hold
            return None
        status, existing, settled, reserved, fired = row if row is not None else ("general", None, [], [], [])
        if status == "stale":
            self._forget_budgets()
            raise _RetryError
        if status == "due":
            self._sweep_first(conn, attempt, now)
        if status == "existing" and existing is not None:
            return self._known_key(conn, request, existing)
        if status not in ("ok", "refused"):
            attempt.general = True
            attempt.commit_sent = False
            return None
        views = [AccountView(b, s, p, settled[i], reserved[i], fired[i]) for i, (b, s, p) in enumerate(keys)]
        refusal = decide(request.ceiling_mc, views, now)
        if status == "refused" and refusal is not None:
            verdict = Verdict.from_refusal(refusal)
            event = refusal_event(verdict, request, now)
            insert_events(conn, [event])
            return ReserveResult(Code.BUDGET_EXCEEDED, refusal=refusal, verdict=verdict, events=(event,))
        if status == "refused" or refusal is not None:  # the function and the rule disagree: a bug, fail closed
            raise LedgerUnavailableError(f"ledger {self.where}: ledger_reserve answered {status!r} where the "
                                         "admission rule did not; the call is refused")
        return ReserveResult(Code.OK, reservation=reservation, remaining_mc=remaining_after(request.ceiling_mc, views))

    def _account_filter(self, wanted: Sequence[tuple[str, str, str]]) -> tuple[str, tuple[Any, ...]]:
        """The condition naming the call's accounts (by id when all are known, else by key), and its parameters."""
        with self._budgets_lock:
            ids = [self._account_ids.get(k) for k in wanted]
        if all(i is not None for i in ids):
            return _BY_ID, ([i[0] for i in ids if i is not None],)
        return _BY_KEY, ([k[0] for k in wanted], [k[1] for k in wanted], [k[2] for k in wanted])

    def _learn_accounts(self, rows: Sequence[TupleRow]) -> dict[tuple[str, str, str], TupleRow]:
        """Account rows by key; their ids are remembered (an account never changes id or goes away)."""
        by_key = {(r[1], r[2], r[3]): r for r in rows}
        with self._budgets_lock:
            if len(self._account_ids) >= _CACHE_ENTRIES_MAX:
                self._account_ids.clear()
            self._account_ids.update((k, (r[0], r[pe.ACCOUNT_SHARDS])) for k, r in by_key.items())
        return by_key

    def _admit(self, conn: Conn, attempt: _Attempt, request: ReserveRequest, now: datetime, *,
               guard: AdmitGuard | None, views: list[AccountView], ids: list[int],
               read: dict[StateKey, StoredState], starts: list[int], locked: dict[int, list[escrow.Shard]]
               ) -> ReserveResult:
        """Decide with the read rows, then write and commit in one round trip.

        ``starts``: per account, the shard its hold tries first (-1: the row); ``locked``: the shards of
        the sharded accounts when they are locked (the slow path), which are rebalanced before the hold.
        """
        outcome = GuardOutcome()
        if guard is not None:
            outcome = guard.apply(read, views, now)
            if outcome.verdict is not None:
                refused = replace(outcome, events=(*outcome.events, refusal_event(outcome.verdict, request, now)))
                self._commit(conn, attempt, refused, read)
                return ReserveResult(outcome.verdict.code, verdict=outcome.verdict, events=refused.events)
            request = outcome.request or request
        refusal = decide(request.ceiling_mc, views, now)
        if refusal is not None:
            verdict = Verdict.from_refusal(refusal)
            event = refusal_event(verdict, request, now)
            self._commit(conn, attempt, GuardOutcome(events=(event,)), read)
            return ReserveResult(Code.BUDGET_EXCEEDED, refusal=refusal, verdict=verdict, events=(event,))
        plans = pe.rebalanced(request.ceiling_mc, [v.budget.limit_mc for v in views], ids, starts, locked)
        if plans is None:  # the decision read other totals than the locked shards: read again
            raise _RetryError
        reservation = new_reservation(uuid.uuid4().hex, request, now)
        a = request.attribution

        def hold() -> None:
            pe.write_caps(conn, plans)
            conn.execute(_INSERT_HOLD.format(pe.HOLD_VALUE), (
                reservation.id, request.idempotency_key, a.namespace, a.tenant, a.agent, a.conversation, a.task,
                a.phase, request.model, request.ceiling_mc, request.input_tokens_max, request.output_tokens_max, now,
                reservation.expires_at, ids, request.sends, a.conversation_shared, a.key_id, ids, starts,
                request.ceiling_mc))

        try:
            self._commit(conn, attempt, outcome, read, hold)
        except errors.RaiseException as exc:
            if not pe.is_dry(exc):
                raise
            rollback(conn)  # nothing was committed: rebalance under the accounts' locks and hold again
            attempt.slow = True
            raise _RetryError from exc
        self._remember(reservation)
        return ReserveResult(Code.OK, reservation=reservation, events=outcome.events,
                             remaining_mc=remaining_after(request.ceiling_mc, views))

    def _remember(self, reservation: Reservation) -> None:
        """Keep a reservation made here until this process resolves it (at most :data:`_MADE_MAX`)."""
        with self._budgets_lock:
            if len(self._made) >= _MADE_MAX:
                del self._made[next(iter(self._made))]
            self._made[reservation.id] = reservation

    def _commit(self, conn: Conn, attempt: _Attempt, outcome: GuardOutcome, read: Mapping[StateKey, StoredState],
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

    # settle and release --------------------------------------------------------------------------

    def settle(self, reservation_id: str, usage: Usage, cost_mc: int, now: datetime,
               guard: SettleGuard | None = None) -> SettleResult:
        """Charge the actual cost once, return the rest of the hold, append one usage row.

        Raises:
            LedgerUnavailableError: if the database cannot answer; retry with the same
                reservation id (a repeat answers ``already_settled`` and charges nothing).
        """
        foreseen = self._foresee(reservation_id, guard)

        def op(conn: Conn, attempt: _Attempt) -> SettleResult:
            if guard is None and not attempt.general:
                attempt.commit_sent = True  # one statement in its own transaction: once sent, it may have committed
                row = conn.execute(_SETTLE_ONE_TRIP, (
                    reservation_id, now, cost_mc, usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                    usage.cache_write_tokens, usage.cache_write_1h_tokens)).fetchone()
                if row is not None and row[0] == "settled":
                    record = settled_record(reservation_of(row[1:]), usage, cost_mc, now, late=False)
                    return SettleResult(Code.SETTLED, record)
                attempt.general = True  # not its plain case, and nothing was written
                attempt.commit_sent = False
            found = self._lock_reservation(conn, attempt, reservation_id, now, foreseen)
            if found is None:
                rollback(conn)
                return SettleResult(Code.RESERVATION_NOT_FOUND)
            reservation, due = found.reservation, found.due
            if reservation.state is ReservationState.SETTLED:
                usage_row = conn.execute(f"SELECT {USAGE_COLS} FROM usage_log WHERE reservation_id = %s",
                                         (reservation_id,)).fetchone()
                rollback(conn)
                return SettleResult(Code.ALREADY_SETTLED, None if usage_row is None else record_of(usage_row))
            record, events = self._resolve(conn, attempt, found, usage, cost_mc=cost_mc, now=now, guard=guard)
            late = reservation.state is not ReservationState.PENDING or due
            return SettleResult(Code.SETTLED_LATE if late else Code.SETTLED, record, events)

        return self._run(op)

    def _resolve(self, conn: Conn, attempt: _Attempt, found: _Found, usage: Usage | None, *, cost_mc: int,
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
        outcome, read = self._settle_guard(conn, guard, found, None if usage is None else cost_mc, now)
        moves = {where: (delta, -held) for where in holds}
        plans = pe.recapped(conn, accounts, moves) if pushed else {}

        def write() -> None:
            pe.write_caps(conn, plans)
            if fired:
                conn.execute(_FIRE_ALERTS, (list(fired), list(fired.values())))
            if unknown:
                pe.apply(conn, moves)
                u = record.usage
                conn.execute(_CORRECT_WRITE, (now, u.input_tokens, u.output_tokens, u.cache_read_tokens,
                                              u.cache_write_tokens, u.cache_write_1h_tokens, cost_mc, record.outcome,
                                              reservation.id, reservation.id))
            else:
                conn.execute(_SETTLE_WRITE, (*pe.apply_params(moves), *usage_row(record), reservation.id))
            insert_events(conn, [*swept, *events])

        self._commit(conn, attempt, outcome, read, write)
        return record, (*events, *outcome.events)

    def release(self, reservation_id: str, now: datetime, guard: SettleGuard | None = None) -> ReleaseResult:
        """Return the whole hold once (the call failed or was abandoned).

        Raises:
            LedgerUnavailableError: if the database cannot answer; retry with the same reservation id.
        """
        foreseen = self._foresee(reservation_id, guard)

        def op(conn: Conn, attempt: _Attempt) -> ReleaseResult:
            found = self._lock_reservation(conn, attempt, reservation_id, now, foreseen)
            if found is None:
                rollback(conn)
                return ReleaseResult(Code.RESERVATION_NOT_FOUND)
            reservation, due = found.reservation, found.due
            if reservation.state is ReservationState.SETTLED:
                rollback(conn)
                return ReleaseResult(Code.ALREADY_SETTLED)
            if reservation.state is ReservationState.UNKNOWN_OUTCOME or (due and reservation.sent):
                return ReleaseResult(Code.RELEASED, self._resolve(conn, attempt, found, None, cost_mc=0, now=now,
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
                self._commit(conn, attempt, GuardOutcome(), {}, unhold("expired"))
                return ReleaseResult(Code.ALREADY_RELEASED)
            outcome, read = self._settle_guard(conn, guard, found, None, now)
            self._commit(conn, attempt, outcome, read, unhold("released"))
            return ReleaseResult(Code.RELEASED, outcome.events)

        return self._run(op)

    def _foresee(self, reservation_id: str, guard: SettleGuard | None) -> list[StateKey]:
        """The guard's state keys for a reservation this process made (its attribution never changes), so
        they are locked with it in one round trip; empty when unknown here (they are locked after)."""
        with self._budgets_lock:
            made = self._made.pop(reservation_id, None)
        return [] if guard is None or made is None else sorted(set(guard.state_keys(made)))

    def _lock_reservation(self, conn: Conn, attempt: _Attempt, reservation_id: str, now: datetime,
                          state_keys: Sequence[StateKey] = ()) -> _Found | None:
        """Lock one reservation and then its unsharded accounts (ascending id); read its sharded ones; None if
        unknown. ``due`` is True when it is still pending but its lease has run out. ``state_keys``: guard
        states to lock and read in the same round trip (after the accounts, in the global order)."""
        with conn.pipeline():
            conn.execute("BEGIN")
            res = conn.execute(_SETTLE_READ, (now, reservation_id))
            states = conn.execute(_LOCK_STATES, key_columns(state_keys)) if state_keys else None
        rows = res.fetchall()
        read = {} if states is None else {StateKey(r[0], r[1]): state_of(r) for r in states.fetchall()}
        row = rows[0] if rows else None
        if row is None:
            if scalar(conn.execute(f"SELECT {_DUE}", (now,))):
                self._sweep_first(conn, attempt, now)  # expire every due lease first, as the model does
            return None
        if row[RES_N]:  # the due flag
            self._sweep_first(conn, attempt, now)
        reservation = reservation_of(row)
        first = RES_N + 2
        by_id = {r[first]: r[first:] for r in rows if r[first] is not None}
        held = [by_id[i] for i in row[15] if i in by_id]  # in the reservation's order: alerts fire in it
        due_self = reservation.state is ReservationState.PENDING and reservation.expires_at <= now
        return _Found(reservation, due_self, held, pe.holds(row[15], row[RES_N + 1]), read, frozenset(state_keys))

    @staticmethod
    def _settle_guard(conn: Conn, guard: SettleGuard | None, found: _Found, cost_mc: int | None,
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
            rows = conn.execute(_LOCK_STATES, key_columns(keys)).fetchall() if keys else []
            read = {StateKey(r[0], r[1]): state_of(r) for r in rows}
        return guard.apply(reservation, cost_mc, read, now), read

    def reservation(self, reservation_id: str) -> Reservation | None:
        """One reservation by id, or None."""
        rows = self._read(f"SELECT {RES_COLS} FROM reservations WHERE id = %s", (reservation_id,))
        return reservation_of(rows[0]) if rows else None

    # reads ---------------------------------------------------------------------------------------

    def accounts(self) -> list[AccountView]:
        """Every account with its money (accounts of deleted budgets are left out)."""
        rows = self._read(
            f"SELECT x.*, b.id, b.level, b.scope, b.period, b.timezone, b.limit_mc, b.alerts "
            f"FROM ({pe.ACCOUNT_SELECT}) AS x JOIN budgets b ON b.id = x.budget_id "
            "ORDER BY b.id, x.scope, x.period_key")
        return [AccountView(budget_of(r[ACCOUNT_ROW:]), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def usage_records(self) -> Iterator[UsageRecord]:
        """The usage log in settle order."""
        return (record_of(r) for r in self._read(f"SELECT {USAGE_COLS} FROM usage_log ORDER BY id"))

    def ledger_snapshot(self) -> LedgerSnapshot:
        """Every account (deleted budgets' too), reservation and usage charge, read in one snapshot."""
        def op(conn: Conn, _: _Attempt) -> LedgerSnapshot:
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
        return self._run(op)

    # defense state -------------------------------------------------------------------------------

    def state(self, key: StateKey) -> StoredState | None:
        """One defense state, or None if it was never written."""
        rows = self._read("SELECT kind, key, version, record FROM states WHERE kind = %s AND key = %s",
                          (key.kind, key.key))
        return state_of(rows[0]) if rows else None

    def states(self, kind: str) -> list[StoredState]:
        """Every state of one kind, ordered by key."""
        return [state_of(r) for r in self._read(
            "SELECT kind, key, version, record FROM states WHERE kind = %s ORDER BY key", (kind,))]

    def put_state(self, state: StoredState, expected_version: int, events: Sequence[Event] = ()) -> bool:
        """Compare-and-set: write ``state`` and ``events`` iff the stored version is ``expected_version``."""
        record = json.dumps(dict(state.record), sort_keys=True)

        def op(conn: Conn, attempt: _Attempt) -> bool:
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
            self._commit(conn, attempt, GuardOutcome(events=tuple(events)), {})
            return True

        return self._run(op)

    # events --------------------------------------------------------------------------------------

    def record_event(self, event: Event) -> None:
        """Append an event."""
        self._write("INSERT INTO events (ts, kind, code, level, scope, detail) VALUES (%s, %s, %s, %s, %s, %s) "
                   "RETURNING id", event_row(event))

    def events(self, kind: str | None = None) -> list[Event]:
        """Events in time order, optionally of one kind."""
        rows = self._read("SELECT ts, kind, code, level, scope, detail FROM events "
                          "WHERE %s::text IS NULL OR kind = %s ORDER BY id", (kind, kind))
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.close()




class PostgresKeyStore:
    """Gateway API keys (:class:`~comptroller.storage.keys.KeyStore`) in the ledger database, for every replica.

    Only digests are stored (see :mod:`comptroller.storage.keys`); a key revoked through
    one replica fails verification on every other at its next request.

    Args:
        url: the ledger's libpq URL (pool options as for :class:`PostgresStore`).
        schema: the schema holding the ledger (default: the server's ``search_path``).
        max_size: pooled connections at most.
        timeout_s: how long a call waits for a free connection, seconds.

    Raises:
        SchemaVersionError: if the schema is behind (run ``comptroller db upgrade``) or ahead.
        LedgerUnavailableError: if the database cannot be reached.
    """

    def __init__(self, url: str, *, schema: str | None = None, max_size: int = 4, timeout_s: float = 5.0) -> None:
        self._db = PostgresStore(url, schema=schema, min_size=1, max_size=max_size, timeout_s=timeout_s)

    def add(self, record: ApiKey) -> None:
        """Store a new key record (from :func:`~comptroller.storage.keys.new_key`)."""
        models = None if record.models is None else json.dumps(list(record.models))
        self._db._write(f"INSERT INTO api_keys ({KEY_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "RETURNING id", (record.id, record.digest, record.tenant, record.agent, record.name,
                                         record.admin, models, record.created_at, record.revoked_at))

    def verify(self, plaintext: str) -> ApiKey | None:
        """The active key whose digest matches ``plaintext`` (constant-time compare), or None."""
        found = key_id(plaintext)
        return match_key(self.get(found) if found else None, plaintext)

    def get(self, key_id: str) -> ApiKey | None:
        """One key by id, revoked or not, or None."""
        rows = self._db._read(f"SELECT {KEY_COLS} FROM api_keys WHERE id = %s", (key_id,))
        return api_key_of(rows[0]) if rows else None

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of one tenant if given), oldest first."""
        rows = self._db._read(f"SELECT {KEY_COLS} FROM api_keys WHERE %s::text IS NULL OR tenant = %s "
                              "ORDER BY created_at, id", (tenant, tenant))
        return [api_key_of(r) for r in rows]

    def revoke(self, key_id: str, now: datetime) -> bool:
        """Revoke a key; False if no such key. Revoking twice keeps the first time."""
        rows = self._db._write("WITH revoked AS (UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at "
                               "IS NULL) SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = %s)", (now, key_id, key_id))
        return bool(rows[0][0])

    def close(self) -> None:
        """Close the pooled connections."""
        self._db.close()

