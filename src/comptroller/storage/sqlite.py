"""The SQLite ledger: the embedded default, safe across threads and processes.

Every write is one ``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock
before reading, so the read of account balances and the write of the hold cannot
interleave with another writer in any thread or process (SQLite docs, "Transaction"
and "Write-Ahead Logging"). WAL mode lets readers (reports) run beside writers;
``synchronous=NORMAL`` in WAL keeps the database consistent after a crash and may
lose only the last transactions on power loss (SQLite docs, "PRAGMA synchronous").
A process killed mid-transaction leaves nothing half-written; its pending
reservations return when their lease expires.

Times are stored as UTC epoch seconds (REAL); money as INTEGER millicents.

Budgets are read on every reserve and settle, so each store keeps them parsed in a
:class:`_BudgetCache`. Triggers bump ``meta.budgets_version`` in the same
transaction as any write to ``budgets`` (from this store, another process or plain
SQL), and every write transaction reads that version before using the cache, so a
cached budget is never older than the transaction that uses it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from comptroller.domain.admission import account_keys, alert_thresholds_crossed, decide, remaining_after
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.defenses.state_rows import EncodedRecord
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
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.state import AdmitGuard, GuardOutcome, SettleGuard, StateKey, StoredState
from comptroller.domain.usage import Usage
from comptroller.storage.rows import (
    alert_event,
    corrected_record,
    new_reservation,
    refusal_event,
    settled_record,
    unknown_outcome_event,
    unknown_outcome_record,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 4
"""1: the ledger; 2: adds ``states`` (defense state rows); 3: adds ``reservations.sent`` (a sent call's
expired lease is charged its ceiling). Each version only adds tables or columns."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budgets (
    id TEXT PRIMARY KEY, level TEXT NOT NULL, scope TEXT NOT NULL, period TEXT NOT NULL,
    timezone TEXT NOT NULL, limit_mc INTEGER NOT NULL CHECK (limit_mc >= 0), alerts TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS budgets_level_scope ON budgets (level, scope);
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY, budget_id TEXT NOT NULL, scope TEXT NOT NULL, period_key TEXT NOT NULL,
    settled_mc INTEGER NOT NULL DEFAULT 0, reserved_mc INTEGER NOT NULL DEFAULT 0 CHECK (reserved_mc >= 0),
    alert_pct_fired INTEGER NOT NULL DEFAULT 0, UNIQUE (budget_id, scope, period_key));
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, idempotency_key TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL, tenant TEXT NOT NULL, agent TEXT NOT NULL,
    conversation TEXT, task TEXT, phase TEXT, model TEXT NOT NULL,
    ceiling_mc INTEGER NOT NULL, input_tokens_max INTEGER NOT NULL, output_tokens_max INTEGER NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, state TEXT NOT NULL, account_ids TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0, conversation_shared INTEGER NOT NULL DEFAULT 0, key_id TEXT);
CREATE INDEX IF NOT EXISTS reservations_pending ON reservations (expires_at) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS usage_log (
    id INTEGER PRIMARY KEY, reservation_id TEXT NOT NULL UNIQUE, idempotency_key TEXT NOT NULL,
    namespace TEXT NOT NULL, tenant TEXT NOT NULL, agent TEXT NOT NULL,
    conversation TEXT, task TEXT, phase TEXT, model TEXT NOT NULL,
    reserved_at REAL NOT NULL, resolved_at REAL NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
    cache_write_1h_tokens INTEGER NOT NULL,
    cost_mc INTEGER NOT NULL, ceiling_mc INTEGER NOT NULL, outcome TEXT NOT NULL,
    conversation_shared INTEGER NOT NULL DEFAULT 0, key_id TEXT);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, code TEXT NOT NULL,
    level TEXT, scope TEXT, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS states (
    kind TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL CHECK (version >= 1),
    record TEXT NOT NULL, PRIMARY KEY (kind, key));
"""

# Any write to ``budgets`` bumps the version the budget caches check (statements with
# inner ``;``, so run one by one rather than split with _SCHEMA).
_BUMP = "BEGIN UPDATE meta SET value = value + 1 WHERE key = 'budgets_version'; END"
_TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS budgets_version_{op.lower()} AFTER {op} ON budgets {_BUMP}"
    for op in ("INSERT", "UPDATE", "DELETE")
)
_BUDGET_COLS = "id, level, scope, period, timezone, limit_mc, alerts"
_CACHE_ENTRIES_MAX = 100_000
_RECORD_OVERHEAD_MAX = 24  # a states row's payload beyond its texts: header, serial types, version

_RES_COLS = ("id, idempotency_key, namespace, tenant, agent, conversation, task, phase, model, ceiling_mc, "
             "input_tokens_max, output_tokens_max, created_at, expires_at, state, account_ids, sent, "
             "conversation_shared, key_id")
_USAGE_COLS = ("reservation_id, idempotency_key, namespace, tenant, agent, conversation, task, phase, model, "
               "reserved_at, resolved_at, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
               "cache_write_1h_tokens, cost_mc, ceiling_mc, outcome, conversation_shared, key_id")


def _ts(at: datetime) -> float:
    return at.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _budget(row: Sequence[Any]) -> Budget:
    return Budget(level=Level(row[1]), scope=row[2], period=row[3], timezone=row[4], limit_mc=row[5],
                  alert_thresholds_pct=tuple(json.loads(row[6])))


_attributions: dict[tuple[Any, ...], Attribution] = {}  # by their columns: a settle reads back what a reserve wrote


def _attribution(row: Sequence[Any], *, shared: bool = False, key_id: str | None = None) -> Attribution:
    """An attribution from its six columns; ``shared``: its conversation is a registered shared group;
    ``key_id``: the API key the call came with.

    Attributions are immutable and their checks pure, so the same columns give the same (remembered)
    object; at most ``_CACHE_ENTRIES_MAX`` are kept, then they start over.
    """
    key = (*row, shared, key_id)
    found = _attributions.get(key)
    if found is None:
        if len(_attributions) >= _CACHE_ENTRIES_MAX:
            _attributions.clear()
        found = _attributions[key] = Attribution(namespace=row[0], tenant=row[1], agent=row[2], conversation=row[3],
                                                 task=row[4], phase=row[5], conversation_shared=shared, key_id=key_id)
    return found


class _BudgetCache:
    """Parsed budgets of one ledger file, valid for one ``meta.budgets_version``.

    Used only inside a write transaction (under the store's lock): :meth:`sync`
    first, with the transaction's cursor, then lookups. A lookup that misses reads
    the rows it needs; the cache holds at most ``_CACHE_ENTRIES_MAX`` entries per map
    and starts over when full.
    """

    def __init__(self) -> None:
        self.version: object = None
        self._as_of = -1  # the data_version the version was read at
        self._by_scope: dict[tuple[str, str], tuple[Budget, ...]] = {}
        self._by_id: dict[str, Budget | None] = {}

    def sync(self, cur: sqlite3.Cursor, data_version: int) -> None:
        """Drop everything if a budget changed since the last transaction that used the cache.

        ``data_version`` is the transaction's ``PRAGMA data_version``: while it is the one the
        version was last read at, no other connection committed, so no budget changed but through
        this store, which calls :meth:`forget` (the version row is not read again).
        """
        if data_version == self._as_of and self.version is not None:
            return
        version = cur.execute("SELECT value FROM meta WHERE key = 'budgets_version'").fetchone()
        if version is None or version[0] != self.version:
            self._by_scope.clear()
            self._by_id.clear()
            self.version = None if version is None else version[0]
        self._as_of = data_version

    def forget(self) -> None:
        """This store writes a budget: read the version (and the budgets) again at the next sync."""
        self.version = None
        self._by_scope.clear()
        self._by_id.clear()

    def for_scope(self, cur: sqlite3.Cursor, level: str, scope: str) -> tuple[Budget, ...]:
        """The budgets set on exactly ``(level, scope)`` (``scope`` may be ``*``)."""
        budgets = self._by_scope.get((level, scope))
        if budgets is None:
            if len(self._by_scope) >= _CACHE_ENTRIES_MAX:
                self._by_scope.clear()
            budgets = tuple(_budget(r) for r in cur.execute(
                f"SELECT {_BUDGET_COLS} FROM budgets WHERE level = ? AND scope = ?", (level, scope)))
            self._by_scope[(level, scope)] = budgets
        return budgets

    def by_id(self, cur: sqlite3.Cursor, budget_id: str) -> Budget | None:
        """The budget with this id, or None if it was deleted."""
        if budget_id not in self._by_id:
            if len(self._by_id) >= _CACHE_ENTRIES_MAX:
                self._by_id.clear()
            row = cur.execute(f"SELECT {_BUDGET_COLS} FROM budgets WHERE id = ?", (budget_id,)).fetchone()
            self._by_id[budget_id] = None if row is None else _budget(row)
        return self._by_id[budget_id]


class _WriteTransaction:
    """``SQLiteStore._write()``: the store's lock and one write transaction, committed at the end of the
    block or rolled back if it raises (a class: cheaper than a generator's context manager, twice a call)."""

    __slots__ = ("_cur", "_store")

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Cursor:
        store = self._store
        store._lock.acquire()
        try:
            self._cur = store._begin()
        except BaseException:
            store._lock.release()
            raise
        return self._cur

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        store = self._store
        try:
            if exc_type is not None:
                store._abandon(self._cur)
                return
            try:
                self._cur.execute("COMMIT")
            except BaseException:
                store._abandon(self._cur)
                raise
        finally:
            store._lock.release()


class _Hold:
    """``SQLiteStore.uncontended()``: yields whether the store and SQLite's write lock were free and are held."""

    __slots__ = ("_held", "_later_wait_ms", "_store")

    def __init__(self, store: SQLiteStore, later_wait_ms: int) -> None:
        self._store, self._later_wait_ms = store, later_wait_ms

    def __enter__(self) -> bool:
        self._held = self._store._hold(self._later_wait_ms)
        return self._held

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._held:
            self._store._let_go()


class SQLiteStore:
    """A :class:`~comptroller.ports.LedgerStore` in one SQLite file.

    Args:
        path: the database file (created with its schema if missing), or ``:memory:``.
        busy_timeout_s: how long a writer waits for another's lock before failing.

    Raises:
        sqlite3.OperationalError: if the file cannot be opened, or the lock is not
            obtained within ``busy_timeout_s``.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout_s)
        self._lock = threading.RLock()  # reentrant: uncontended() holds it around a caller's whole operation
        self._begun = False  # uncontended() took the write lock: the next _write's transaction uses it
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._busy_ms_now = self._busy_timeout_ms  # the connection's busy_timeout (uncontended() lowers it)
        self._held = False  # inside uncontended(): later write transactions wait at most _later_wait_ms
        self._later_wait_ms = 0
        self._checkpoints: sqlite3.Connection | None = None  # checkpoint()'s own connection, opened on first use
        self._checkpoint_lock = threading.Lock()
        self._written: list[Event] = []  # events appended by the current write transaction, for its result
        self._state_texts: dict[StateKey, tuple[str, StoredState]] = {}  # last text read or written per row
        self._rows: dict[StateKey, StoredState | None] = {}  # state rows as of data version _rows_as_of (None: absent)
        self._rows_as_of = -1  # PRAGMA data_version when _rows was last known to be the file's (-1: never)
        self._budgets = _BudgetCache()
        self._dv: int | None = None  # the current write transaction's data_version, once read
        self._expiry_bound: float | None = None  # no pending lease expires before it (None: unknown)
        self._expiry_as_of = -1  # the data_version _expiry_bound holds at
        self._conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        _set_wal(self._conn, busy_timeout_s)
        self._conn.execute("PRAGMA synchronous = NORMAL")
        page = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        self._local_max, self._overflow_page = page - 35, page - 4  # a table leaf's payload bytes (fileformat.html)
        with self._write() as cur:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            for trigger in _TRIGGERS:
                cur.execute(trigger)
            columns = {r[1] for r in cur.execute("PRAGMA table_info(reservations)")}
            if "sent" not in columns:  # a version 2 file
                cur.execute("ALTER TABLE reservations ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")
            if "conversation_shared" not in columns:  # a file from before shared groups were kept per hold
                cur.execute("ALTER TABLE reservations ADD COLUMN conversation_shared INTEGER NOT NULL DEFAULT 0")
            if "key_id" not in columns:  # a version 3 file: no API key id per hold and usage row
                cur.execute("ALTER TABLE reservations ADD COLUMN key_id TEXT")
                cur.execute("ALTER TABLE usage_log ADD COLUMN conversation_shared INTEGER NOT NULL DEFAULT 0")
                cur.execute("ALTER TABLE usage_log ADD COLUMN key_id TEXT")
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            cur.execute("INSERT OR IGNORE INTO meta VALUES ('budgets_version', '0')")

    def _write(self) -> _WriteTransaction:
        """One write transaction under the store's lock: ``with self._write() as cur`` (commits, or rolls back)."""
        return _WriteTransaction(self)

    def _begin(self) -> sqlite3.Cursor:
        """Start a write transaction (the lock is held): the one :meth:`uncontended` began, or a new one."""
        self._written = []
        self._dv = None
        cur = self._conn.cursor()
        if self._begun:  # the write lock uncontended() took
            self._begun = False
        else:
            self._busy(self._later_wait_ms if self._held else self._busy_timeout_ms)
            cur.execute("BEGIN IMMEDIATE")
        return cur

    def _abandon(self, cur: sqlite3.Cursor) -> None:
        """A write transaction failed (the lock is held): roll it back and forget the rows it wrote."""
        self._rows_as_of = -1  # rows this transaction wrote are not the file's: read them again
        self._expiry_as_of, self._expiry_bound = -1, None  # nor its expiries: scan again
        self._budgets.forget()
        if self._conn.in_transaction:
            cur.execute("ROLLBACK")

    def _data_version(self, cur: sqlite3.Cursor) -> int:
        """The transaction's ``PRAGMA data_version`` (read once per write transaction): it changes when
        another connection commits, never for this one's commits (SQLite docs, "PRAGMA data_version")."""
        dv = self._dv
        if dv is None:
            dv = self._dv = int(cur.execute("PRAGMA data_version").fetchone()[0])
        return dv

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            self._dv = None  # read afresh: this is not a write transaction
            if not self._held:
                self._busy(self._busy_timeout_ms)
            yield self._conn.cursor()

    def _busy(self, ms: int) -> None:
        """Set the connection's busy_timeout (under the lock), unless it is already that."""
        if self._busy_ms_now != ms:
            self._conn.execute(f"PRAGMA busy_timeout = {ms}")
            self._busy_ms_now = ms

    def uncontended(self, later_wait_s: float = 0.1) -> _Hold:
        """Take the store's connection and SQLite's write lock if both are free now, never waiting.

        For a caller that must not block (the gateway's event loop). Yields True when both are
        held: the store calls made inside the block wait on no other thread, and the first write
        transaction uses the write lock taken here. A later write transaction of the same block
        (an engine that recounts a call near a budget's edge reserves twice) may meet another
        process's writer; it waits for it at most ``later_wait_s`` (writers hold the lock for well
        under a millisecond), then fails with "database is locked". Yields False, having done
        nothing, when another thread of this process or another connection's writer holds a lock:
        make the calls where a wait is bounded. Not for :meth:`ledger_snapshot`.

        Args:
            later_wait_s: the longest a later write transaction of the block waits, seconds.
        """
        return _Hold(self, int(later_wait_s * 1000))

    def held_here(self) -> bool:
        """Whether another thread of this process holds the store now (an :meth:`uncontended` block
        would find it taken until that thread's operation ends); a snapshot, never waits."""
        if self._lock.acquire(blocking=False):
            self._lock.release()
            return False
        return True

    def _hold(self, later_wait_ms: int) -> bool:
        """:meth:`uncontended`'s start: True with the lock and SQLite's write lock taken, else False (nothing taken)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._busy(0)  # left at 0 after the block: calls made outside one set it back first
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:  # SQLITE_BUSY: another connection writes; or a failing or closed file
            self._lock.release()
            return False
        except BaseException:
            self._lock.release()
            raise
        self._begun = self._held = True
        self._later_wait_ms = later_wait_ms
        return True

    def _let_go(self) -> None:
        """:meth:`uncontended`'s end, after a True start: the write lock returned if no transaction used it."""
        try:
            self._held = False
            if self._begun:  # no write transaction used it
                self._begun = False
                self._conn.execute("ROLLBACK")
        finally:
            self._lock.release()

    def defer_checkpoints(self, backstop_pages: int) -> None:
        """Leave WAL checkpoints to :meth:`checkpoint`, off this connection's commits.

        SQLite checkpoints inside the commit that takes the WAL past ``wal_autocheckpoint``
        pages (1000 by default), so that call pays for the checkpoint's ``fsync`` calls. This raises
        the threshold to ``backstop_pages``: a commit then checkpoints only when the WAL has
        grown that large, which bounds the WAL if the caller's periodic :meth:`checkpoint`
        stops (SQLite docs, "Write-Ahead Logging", "Automatic Checkpoint").

        Raises:
            ValueError: for ``backstop_pages`` < 1 (0 would turn the bound off).
        """
        if backstop_pages < 1:
            raise ValueError(f"backstop_pages must be >= 1 (0 leaves the WAL unbounded), got {backstop_pages}")
        with self._lock:
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {int(backstop_pages)}")

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int] | None:
        """Copy the WAL into the database file (``PRAGMA wal_checkpoint``), on a connection of its own.

        ``PASSIVE`` never waits and lets the store's writers go on meanwhile; once every frame is
        copied, the next commit starts the WAL over from its beginning. ``TRUNCATE`` also empties
        the WAL file, taking the write lock for that moment; it does not wait for it either.

        Returns:
            SQLite's ``(busy, frames in the WAL, frames copied)`` (busy 1: not complete, try later),
            or None for ``:memory:``.

        Raises:
            ValueError: for a mode other than PASSIVE, FULL, RESTART or TRUNCATE.
            sqlite3.OperationalError: if the file cannot be read or written.
        """
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode!r}: PASSIVE, FULL, RESTART or TRUNCATE")
        if self.path == ":memory:":
            return None
        with self._checkpoint_lock:
            if self._checkpoints is None:
                self._checkpoints = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                                    timeout=0)
            busy, frames, copied = self._checkpoints.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(busy), int(frames), int(copied)

    # budgets
    def put_budget(self, budget: Budget) -> None:
        """Create or replace a budget."""
        with self._write() as cur:
            self._budgets.forget()
            cur.execute(
                "INSERT OR REPLACE INTO budgets VALUES (?, ?, ?, ?, ?, ?, ?)",
                (budget.id, str(budget.level), budget.scope, str(budget.period), budget.timezone,
                 budget.limit_mc, json.dumps(list(budget.alert_thresholds_pct))),
            )

    def delete_budget(self, budget_id: str) -> bool:
        """Delete a budget; True if it existed."""
        with self._write() as cur:
            self._budgets.forget()
            return cur.execute("DELETE FROM budgets WHERE id = ?", (budget_id,)).rowcount > 0

    def budgets(self) -> list[Budget]:
        """Every budget, ordered by id."""
        with self._read() as cur:
            return [_budget(r) for r in cur.execute("SELECT * FROM budgets ORDER BY id")]

    # reservations
    def reserve(self, request: ReserveRequest, now: datetime, guard: AdmitGuard | None = None) -> ReserveResult:
        """Answer a known key; else run the guard, then the budgets; hold the ceiling or refuse (one transaction)."""
        with self._write() as cur:
            self._expire(cur, now)
            row = cur.execute(f"SELECT {_RES_COLS} FROM reservations WHERE idempotency_key = ?",
                              (request.idempotency_key,)).fetchone()
            if row is not None:
                existing = self._reservation(row)
                if request.same_request(existing):
                    return ReserveResult(Code.ALREADY_RESERVED, reservation=existing)
                return ReserveResult(Code.IDEMPOTENCY_CONFLICT)
            scopes = request.attribution.scopes()
            keys = account_keys(scopes, self._candidate_budgets(cur, scopes), now)
            ids, views = self._accounts_for(cur, keys)
            outcome = GuardOutcome()
            if guard is not None:
                outcome = guard.apply(self._read_states(cur, guard.state_keys()), views, now)
                if outcome.verdict is not None:
                    refused = replace(outcome, events=(*outcome.events, refusal_event(outcome.verdict, request, now)))
                    self._commit(cur, refused)
                    return ReserveResult(outcome.verdict.code, verdict=outcome.verdict, events=refused.events)
                request = outcome.request or request
            refusal = decide(request.ceiling_mc, views, now)
            if refusal is not None:
                verdict = Verdict.from_refusal(refusal)
                event = refusal_event(verdict, request, now)
                self._insert_event(cur, event)
                return ReserveResult(Code.BUDGET_EXCEEDED, refusal=refusal, verdict=verdict, events=(event,))
            if ids:
                cur.executemany("UPDATE accounts SET reserved_mc = reserved_mc + ? WHERE id = ?",
                                [(request.ceiling_mc, i) for i in ids])
            reservation = new_reservation(uuid.uuid4().hex, request, now)
            a = request.attribution
            cur.execute(
                f"INSERT INTO reservations ({_RES_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (reservation.id, request.idempotency_key, a.namespace, a.tenant, a.agent, a.conversation,
                 a.task, a.phase, request.model, request.ceiling_mc, request.input_tokens_max,
                 request.output_tokens_max, _ts(now), _ts(reservation.expires_at), "pending",
                 ",".join(map(str, ids)), int(request.sends), int(a.conversation_shared), a.key_id),
            )
            if self._expiry_bound is not None:  # this lease is pending now: the bound covers it
                self._expiry_bound = min(self._expiry_bound, _ts(reservation.expires_at))
            self._commit(cur, outcome)
            return ReserveResult(Code.OK, reservation=reservation, events=outcome.events,
                                 remaining_mc=remaining_after(request.ceiling_mc, views))

    def _read_states(self, cur: sqlite3.Cursor, keys: Iterable[StateKey]) -> dict[StateKey, StoredState]:
        """The rows of ``keys`` that exist; only rows this store may not know are read (one query).

        ``PRAGMA data_version`` changes when another connection commits (SQLite docs), so while it
        is the one this store last saw, every row this store read or wrote since (present or
        absent) is still the file's and is answered from memory; a transaction that rolls back
        forgets them all (:meth:`_write`). Rows read come back as the same :class:`StoredState`
        object while their text is unchanged, so the guards' parse memo hits.
        """
        wanted = set(keys)
        if not wanted:
            return {}
        rows = self._rows
        data_version = self._data_version(cur)
        if data_version != self._rows_as_of or len(rows) >= _CACHE_ENTRIES_MAX:
            rows.clear()
            self._rows_as_of = data_version
        unknown = sorted(wanted.difference(rows))
        if unknown:  # point lookups on the primary key (an IN list builds a temporary index per statement)
            query = " UNION ALL ".join(["SELECT kind, key, version, record FROM states WHERE kind = ? AND key = ?"]
                                       * len(unknown))
            found = {(r[0], r[1]): r for r in cur.execute(query, [p for key in unknown for p in key])}
            for key in unknown:
                r = found.get(key)
                rows[key] = None if r is None else self._stored(key, r[2], r[3])
        return {key: stored for key in wanted if (stored := rows[key]) is not None}

    def _stored(self, key: StateKey, version: int, text: str) -> StoredState:
        cached = self._state_texts.get(key)
        if cached is not None and cached[1].version == version and cached[0] == text:
            return cached[1]
        stored = StoredState(key, version, orjson.loads(text))
        self._remember_state(key, text, stored)
        return stored

    def _remember_state(self, key: StateKey, text: str, stored: StoredState) -> None:
        if len(self._state_texts) >= _CACHE_ENTRIES_MAX:
            self._state_texts.clear()
        self._state_texts[key] = (text, stored)

    def _commit(self, cur: sqlite3.Cursor, outcome: GuardOutcome) -> None:
        rows: list[tuple[str, str, int, str]] = []
        known: list[tuple[int, str, str, str]] = []  # rows this store read or wrote: (version, record, kind, key)
        for w in outcome.writes:  # orjson: a state's JSON is written on every admit and settle (4x json's speed)
            record = w.record
            if type(record) is EncodedRecord:  # its state built its JSON text (the loop history's long row)
                text = record.json_text
            else:
                text = orjson.dumps(record if type(record) is dict else dict(record),  # orjson takes dicts only
                                    option=orjson.OPT_SORT_KEYS).decode()
            if len(text) > self._local_max and text.isascii():
                text = self._padded(w.key, text)
            if self._rows.get(w.key) is not None:  # there, unless the transaction that created it rolled back
                known.append((w.version, text, w.key.kind, w.key.key))
            else:
                rows.append((w.key.kind, w.key.key, w.version, text))
            self._remember_state(w.key, text, w)
            self._rows[w.key] = w
        if known:  # an UPDATE on the primary key skips the upsert's new-rowid seek and its conflict check
            cur.executemany("UPDATE states SET version = ?, record = ? WHERE kind = ? AND key = ?", known)
            if cur.rowcount != len(known):  # a row was not there: upsert them all (the same values again)
                rows += [(kind, key, version, text) for version, text, kind, key in known]
        if rows:  # an upsert updates the row in place (INSERT OR REPLACE deleted and re-inserted it and its key)
            cur.executemany("INSERT INTO states (kind, key, version, record) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (kind, key) DO UPDATE SET version = excluded.version, "
                            "record = excluded.record", rows)
        for event in outcome.events:
            self._insert_event(cur, event)

    def _padded(self, key: StateKey, text: str) -> str:
        """An ASCII record spilling over its leaf page, padded with spaces (JSON whitespace) to nearly fill its last
        overflow page: its payload keeps one size while it grows within those pages, so SQLite overwrites the cell
        and its overflow pages in place (btreeOverwriteCell) instead of freeing and allocating them (two more pages
        written to the WAL: the freelist trunk and page 1)."""
        size = len(text) + len(key.kind) + len(key.key) + _RECORD_OVERHEAD_MAX  # at least the payload's bytes
        step = self._overflow_page
        top = self._local_max + -(-(size - self._local_max) // step) * step  # the bytes those overflow pages hold
        return text + " " * (top - size)

    def _after(self, cur: sqlite3.Cursor, guard: SettleGuard | None, reservation: Reservation,
               cost_mc: int | None, now: datetime) -> None:
        if guard is not None:
            states = self._read_states(cur, guard.state_keys(reservation))
            self._commit(cur, guard.apply(reservation, cost_mc, states, now))

    def _candidate_budgets(self, cur: sqlite3.Cursor, scopes: Sequence[tuple[Level, str]]) -> list[Budget]:
        """Budgets set on one of the call's scopes or on its level's default ``*`` (from the cache)."""
        self._budgets.sync(cur, self._data_version(cur))
        candidates: list[Budget] = []
        for level, key in scopes:
            candidates += self._budgets.for_scope(cur, level, key)
            if key != ANY_SCOPE:
                candidates += self._budgets.for_scope(cur, level, ANY_SCOPE)
        return candidates

    @staticmethod
    def _accounts_for(cur: sqlite3.Cursor, keys: Sequence[tuple[Budget, str, str]]
                      ) -> tuple[list[int], list[AccountView]]:
        """Ids and balances of the accounts a call touches, creating the missing ones (empty).

        One statement reads them all (a UNION ALL of indexed lookups); only missing accounts
        cost an INSERT each.
        """
        if not keys:
            return [], []
        query = " UNION ALL ".join(
            ["SELECT budget_id, scope, period_key, id, settled_mc, reserved_mc, alert_pct_fired FROM accounts "
             "WHERE budget_id = ? AND scope = ? AND period_key = ?"] * len(keys))
        found = {(r[0], r[1], r[2]): r[3:] for r in
                 cur.execute(query, [part for b, scope, period in keys for part in (b.id, scope, period)])}
        ids: list[int] = []
        views: list[AccountView] = []
        for budget, scope, period in keys:
            row = found.get((budget.id, scope, period))
            if row is None:
                cur.execute("INSERT INTO accounts (budget_id, scope, period_key) VALUES (?, ?, ?)",
                            (budget.id, scope, period))
                row = found[(budget.id, scope, period)] = (int(cur.lastrowid or 0), 0, 0, 0)
            ids.append(int(row[0]))
            views.append(AccountView(budget, scope, period, row[1], row[2], row[3]))
        return ids, views

    def settle(self, reservation_id: str, usage: Usage, cost_mc: int, now: datetime,
               guard: SettleGuard | None = None) -> SettleResult:
        """Charge the actual cost once, return the rest, append one usage row."""
        with self._write() as cur:
            self._expire(cur, now)
            row = cur.execute(f"SELECT {_RES_COLS} FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
            if row is None:
                return SettleResult(Code.RESERVATION_NOT_FOUND)
            reservation = self._reservation(row)
            if reservation.state is ReservationState.SETTLED:
                return SettleResult(Code.ALREADY_SETTLED, self._usage_row(cur, reservation_id))
            if reservation.state is ReservationState.UNKNOWN_OUTCOME:
                record = self._correct(cur, reservation, row[15], usage, cost_mc, now=now)
                self._after(cur, guard, reservation, cost_mc, now)
                return SettleResult(Code.SETTLED_LATE, record, tuple(self._written))
            late = reservation.state is not ReservationState.PENDING
            held = 0 if late else reservation.ceiling_mc
            self._budgets.sync(cur, self._data_version(cur))
            ids = _ids(row[15])
            fired = self._alerts(cur, ids, cost_mc, now)
            cur.executemany(
                "UPDATE accounts SET settled_mc = settled_mc + ?, reserved_mc = reserved_mc - ?, "
                "alert_pct_fired = ? WHERE id = ?", [(cost_mc, held, fired[i], i) for i in ids])
            record = settled_record(reservation, usage, cost_mc, now, late=late)
            self._insert_usage(cur, record)
            cur.execute("UPDATE reservations SET state = 'settled' WHERE id = ?", (reservation_id,))
            self._after(cur, guard, reservation, cost_mc, now)
            return SettleResult(Code.SETTLED_LATE if late else Code.SETTLED, record, tuple(self._written))

    def _correct(self, cur: sqlite3.Cursor, reservation: Reservation, account_ids: str, usage: Usage | None,
                 cost_mc: int, *, now: datetime) -> UsageRecord:
        """Replace an ``unknown_outcome`` ceiling charge by the real cost (``usage`` None: a release, zero)."""
        self._budgets.sync(cur, self._data_version(cur))
        ids = _ids(account_ids)
        delta = cost_mc - reservation.ceiling_mc
        fired = self._alerts(cur, ids, delta, now)
        cur.executemany("UPDATE accounts SET settled_mc = settled_mc + ?, alert_pct_fired = ? WHERE id = ?",
                        [(delta, fired[i], i) for i in ids])
        record = corrected_record(reservation, usage, cost_mc, now)
        u = record.usage
        cur.execute("UPDATE usage_log SET resolved_at = ?, input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, "
                    "cache_write_tokens = ?, cache_write_1h_tokens = ?, cost_mc = ?, outcome = ? "
                    "WHERE reservation_id = ?",
                    (_ts(now), u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens,
                     u.cache_write_1h_tokens, cost_mc, record.outcome, reservation.id))
        cur.execute("UPDATE reservations SET state = 'settled' WHERE id = ?", (reservation.id,))
        return record

    def _alerts(self, cur: sqlite3.Cursor, account_ids: Sequence[int], cost_mc: int, now: datetime) -> dict[int, int]:
        """Record the alerts a charge of ``cost_mc`` crosses on each account; their new ``alert_pct_fired``.

        One statement reads the accounts. An account whose budget was deleted fires no alert.
        """
        if not account_ids:
            return {}
        rows = {r[0]: r[1:] for r in cur.execute(
            "SELECT id, budget_id, scope, period_key, settled_mc, reserved_mc, alert_pct_fired FROM accounts "
            f"WHERE id IN ({','.join('?' * len(account_ids))})", list(account_ids))}
        fired_by_id: dict[int, int] = {}
        for account_id in account_ids:  # in the call's account order, so alerts keep the backends' order
            budget_id, scope, period, settled_mc, reserved_mc, fired = rows[account_id]
            budget = self._budgets.by_id(cur, budget_id)
            view = None if budget is None else AccountView(budget, scope, period, settled_mc, reserved_mc, fired)
            crossed = [] if view is None else alert_thresholds_crossed(view, settled_mc + cost_mc)
            for pct in crossed:
                assert view is not None
                self._insert_event(cur, alert_event(view, pct, settled_mc + cost_mc, now))
            fired_by_id[account_id] = int(crossed[-1] if crossed else fired)
        return fired_by_id

    def release(self, reservation_id: str, now: datetime, guard: SettleGuard | None = None) -> ReleaseResult:
        """Return the whole hold once."""
        with self._write() as cur:
            self._expire(cur, now)
            row = cur.execute(f"SELECT {_RES_COLS} FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
            if row is None:
                return ReleaseResult(Code.RESERVATION_NOT_FOUND)
            reservation = self._reservation(row)
            if reservation.state is ReservationState.SETTLED:
                return ReleaseResult(Code.ALREADY_SETTLED)
            if reservation.state is ReservationState.UNKNOWN_OUTCOME:
                self._correct(cur, reservation, row[15], None, 0, now=now)
                self._after(cur, guard, reservation, None, now)
                return ReleaseResult(Code.RELEASED, tuple(self._written))
            if reservation.state is not ReservationState.PENDING:
                return ReleaseResult(Code.ALREADY_RELEASED)
            self._unhold(cur, reservation_id, reservation.ceiling_mc, row[15], "released")
            self._after(cur, guard, reservation, None, now)
            return ReleaseResult(Code.RELEASED, tuple(self._written))

    @staticmethod
    def _unhold(cur: sqlite3.Cursor, reservation_id: str, ceiling_mc: int, account_ids: str, state: str) -> None:
        cur.executemany("UPDATE accounts SET reserved_mc = reserved_mc - ? WHERE id = ?",
                        [(ceiling_mc, i) for i in _ids(account_ids)])
        cur.execute("UPDATE reservations SET state = ? WHERE id = ?", (state, reservation_id))

    def expire(self, now: datetime) -> int:
        """Return the holds of every lease expired at ``now``."""
        with self._write() as cur:
            return self._expire(cur, now)

    def _expire(self, cur: sqlite3.Cursor, now: datetime) -> int:
        """Resolve every pending lease expired at ``now`` (in a write transaction); how many.

        Most transactions find none, so the store keeps a bound no pending lease expires before,
        valid while no other connection commits (``PRAGMA data_version``): before it, nothing is
        read. The bound is the earliest pending expiry, read when a scan follows another scan with
        no other writer between; a reserve lowers it to its own lease's expiry, and a settle or
        release only removes leases (the bound stays low: safe). A transaction that rolls back
        drops it (:meth:`_abandon`).
        """
        at = _ts(now)
        data_version = self._data_version(cur)
        bound = self._expiry_bound
        if bound is not None and at < bound and data_version == self._expiry_as_of:
            return 0
        rows = cur.execute(f"SELECT {_RES_COLS} FROM reservations WHERE state = 'pending' AND expires_at <= ? "
                           "ORDER BY expires_at, id", (at,)).fetchall()
        self._resolve_expired(cur, rows, now)
        if data_version == self._expiry_as_of:  # no other writer since the last scan: worth a bound
            earliest = cur.execute("SELECT min(expires_at) FROM reservations WHERE state = 'pending'").fetchone()[0]
            self._expiry_bound = math.inf if earliest is None else float(earliest)
        else:
            self._expiry_bound = None
        self._expiry_as_of = data_version
        return len(rows)

    def _resolve_expired(self, cur: sqlite3.Cursor, rows: list[Any], now: datetime) -> None:
        """Charge each expired sent lease its ceiling (``unknown_outcome``); return the others' holds."""
        for row in rows:
            if row[16]:  # sent: the provider may have billed it, so its hold becomes its charge
                reservation = self._reservation(row)
                cur.executemany("UPDATE accounts SET reserved_mc = reserved_mc - ?, settled_mc = settled_mc + ? "
                                "WHERE id = ?", [(row[9], row[9], i) for i in _ids(row[15])])
                self._insert_usage(cur, unknown_outcome_record(reservation, now))
                self._insert_event(cur, unknown_outcome_event(reservation, now))
                cur.execute("UPDATE reservations SET state = 'unknown_outcome' WHERE id = ?", (row[0],))
            else:
                self._unhold(cur, row[0], row[9], row[15], "expired")

    def renew(self, reservation_id: str, now: datetime, ttl_s: float) -> bool:
        """Extend a pending lease to ``now + ttl_s`` (never shorten it); False if it is resolved or expired."""
        check_ttl_s(ttl_s)
        with self._write() as cur:
            self._expire(cur, now)
            return cur.execute("UPDATE reservations SET expires_at = max(expires_at, ?) WHERE id = ? "
                               "AND state = 'pending'", (_ts(now) + ttl_s, reservation_id)).rowcount > 0

    def reservation(self, reservation_id: str) -> Reservation | None:
        """One reservation by id."""
        with self._read() as cur:
            row = cur.execute(f"SELECT {_RES_COLS} FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
            return None if row is None else self._reservation(row)

    @staticmethod
    def _reservation(row: Sequence[Any]) -> Reservation:
        return Reservation(
            id=row[0], idempotency_key=row[1], attribution=_attribution(row[2:8], shared=bool(row[17]), key_id=row[18]),
        model=row[8],
            ceiling_mc=row[9], input_tokens_max=row[10], output_tokens_max=row[11],
            created_at=_dt(row[12]), expires_at=_dt(row[13]), state=ReservationState(row[14]), sent=bool(row[16]),
        )

    # usage log and events
    @staticmethod
    def _insert_usage(cur: sqlite3.Cursor, r: UsageRecord) -> None:
        a, u = r.attribution, r.usage
        cur.execute(
            f"INSERT INTO usage_log ({_USAGE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (r.reservation_id, r.idempotency_key, a.namespace, a.tenant, a.agent, a.conversation, a.task,
             a.phase, r.model, _ts(r.reserved_at), _ts(r.resolved_at), u.input_tokens, u.output_tokens,
             u.cache_read_tokens, u.cache_write_tokens, u.cache_write_1h_tokens, r.cost_mc, r.ceiling_mc,
             r.outcome, int(a.conversation_shared), a.key_id),
        )

    @staticmethod
    def _record(row: Sequence[Any]) -> UsageRecord:
        return UsageRecord(
            reservation_id=row[0], idempotency_key=row[1], model=row[8],
            attribution=_attribution(row[2:8], shared=bool(row[19]), key_id=row[20]),
            reserved_at=_dt(row[9]), resolved_at=_dt(row[10]),
            usage=Usage(row[11], row[12], row[13], row[14], row[15]),
            cost_mc=row[16], ceiling_mc=row[17], outcome=row[18],
        )

    def _usage_row(self, cur: sqlite3.Cursor, reservation_id: str) -> UsageRecord:
        row = cur.execute(f"SELECT {_USAGE_COLS} FROM usage_log WHERE reservation_id = ?",
                          (reservation_id,)).fetchone()
        return self._record(row)

    def accounts(self) -> list[AccountView]:
        """Every account with its money (accounts of deleted budgets are left out)."""
        with self._read() as cur:
            rows = cur.execute(
                "SELECT a.scope, a.period_key, a.settled_mc, a.reserved_mc, a.alert_pct_fired, b.id, b.level, "
                "b.scope, b.period, b.timezone, b.limit_mc, b.alerts FROM accounts a "
                "JOIN budgets b ON b.id = a.budget_id ORDER BY b.id, a.scope, a.period_key").fetchall()
        return [AccountView(_budget(r[5:]), r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def usage_records(self) -> Iterator[UsageRecord]:
        """The usage log in settle order."""
        with self._read() as cur:
            rows = cur.execute(f"SELECT {_USAGE_COLS} FROM usage_log ORDER BY id").fetchall()
        return (self._record(r) for r in rows)

    def _insert_event(self, cur: sqlite3.Cursor, e: Event) -> None:
        self._written.append(e)
        cur.execute("INSERT INTO events (ts, kind, code, level, scope, detail) VALUES (?,?,?,?,?,?)",
                    (_ts(e.ts), e.kind, e.code, e.level, e.scope, json.dumps(e.detail, sort_keys=True)))

    def ledger_snapshot(self) -> LedgerSnapshot:
        """Every account (deleted budgets' too), reservation and usage charge, read in one transaction."""
        with self._read() as cur:
            cur.execute("BEGIN")
            try:
                accounts = cur.execute("SELECT id, budget_id, scope, period_key, settled_mc, reserved_mc "
                                       "FROM accounts ORDER BY id").fetchall()
                holds = cur.execute("SELECT id, state, ceiling_mc, account_ids FROM reservations "
                                    "ORDER BY id").fetchall()
                charges = cur.execute("SELECT reservation_id, cost_mc FROM usage_log ORDER BY id").fetchall()
            finally:
                cur.execute("COMMIT")
        refs = {r[0]: AccountRef(r[1], r[2], r[3]) for r in accounts}
        return LedgerSnapshot(
            balances=tuple(AccountBalance(refs[r[0]], r[4], r[5]) for r in accounts),
            holds=tuple(Hold(r[0], ReservationState(r[1]), r[2],
                             tuple(refs.get(i, AccountRef("?", f"account id {i}", "?")) for i in _ids(r[3])))
                        for r in holds),
            charges=tuple(Charge(r[0], r[1]) for r in charges))

    # defense state
    def state(self, key: StateKey) -> StoredState | None:
        """One defense state, or None."""
        with self._read() as cur:
            return self._read_states(cur, [key]).get(key)

    def states(self, kind: str) -> list[StoredState]:
        """Every state of one kind, ordered by key."""
        with self._read() as cur:
            rows = cur.execute("SELECT key, version, record FROM states WHERE kind = ? ORDER BY key",
                               (kind,)).fetchall()
        return [StoredState(StateKey(kind, r[0]), r[1], json.loads(r[2])) for r in rows]

    def put_state(self, state: StoredState, expected_version: int, events: Sequence[Event] = ()) -> bool:
        """Compare-and-set on the stored version (0: must not exist), in one transaction."""
        with self._write() as cur:
            row = cur.execute("SELECT version FROM states WHERE kind = ? AND key = ?",
                              (state.key.kind, state.key.key)).fetchone()
            if (0 if row is None else row[0]) != expected_version:
                return False
            self._commit(cur, GuardOutcome(writes=(state,), events=tuple(events)))
            return True

    def record_event(self, event: Event) -> None:
        """Append an event."""
        with self._write() as cur:
            self._insert_event(cur, event)

    def events(self, kind: str | None = None) -> list[Event]:
        """Events in time order, optionally of one kind."""
        with self._read() as cur:
            rows = cur.execute("SELECT ts, kind, code, level, scope, detail FROM events "
                               "WHERE ? IS NULL OR kind = ? ORDER BY id", (kind, kind)).fetchall()
        return [Event(_dt(r[0]), r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def close(self) -> None:
        """Close the connections."""
        with self._checkpoint_lock:
            if self._checkpoints is not None:
                self._checkpoints.close()
        with self._lock:
            self._conn.close()


def _set_wal(conn: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Switch the file to WAL, retrying "database is locked" until the busy timeout.

    ``PRAGMA journal_mode`` may answer SQLITE_BUSY at once, without calling the busy
    handler, while another process converts a fresh file; without the retry, processes
    opening a new ledger together fail now and then.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _ids(account_ids: str) -> list[int]:
    return [int(i) for i in account_ids.split(",") if i]
