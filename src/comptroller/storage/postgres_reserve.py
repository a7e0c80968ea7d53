"""Reserve on the PostgreSQL ledger, and the caches a store keeps for it.

A reserve without a guard whose accounts this process knows is first tried as one
statement, the server function ``ledger_reserve`` (migration 0008), which locks the
unsharded accounts, applies the admission rule's test and holds the ceiling (on a
row, or on a shard with room: ``escrow_hold``) or answers why not. Everything else (a
guard to run, an account not seen yet, caps to rebalance, every shard dry) takes the
general path: read and lock in one round trip (the accounts, the guard's states), decide
in Python (:func:`comptroller.domain.admission.decide`, the guard), then write and
commit in a second.

Group commit: a reserve without a guard whose budgets and accounts are cached is handed to the
store's :class:`~.postgres_batch.Batcher`; the reserves its callers make while a batch is being
committed go together in the next one, one call of ``ledger_reserve_batch`` (migration 0009),
each item answered on its own (a lone reserve is a batch of one). An item the batch function leaves alone
(``general``, ``due``, a known key) and every item of a batch that failed on a statement error
take the paths above, alone, so one item's error fails only that item.

Caches (each checked against the database, so a stale entry costs a retry, never a wrong
answer): budgets parsed per ``(level, scope)`` for one ``meta.budgets_version``; account
ids and shard counts by key (they never change); the reservations made here, so their
settle locks the guard's states with the reservation (:meth:`Reserver.foresee`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import TupleRow

from comptroller.domain import escrow
from comptroller.domain.admission import account_keys, decide, remaining_after
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Verdict
from comptroller.domain.ledger import AccountView, Reservation, ReserveRequest, ReserveResult
from comptroller.domain.scopes import Level
from comptroller.domain.state import AdmitGuard, GuardOutcome, SettleGuard, StateKey, StoredState
from comptroller.errors import LedgerUnavailableError
from comptroller.storage import postgres_escrow as pe
from comptroller.storage.postgres_batch import Batcher
from comptroller.storage.postgres_pool import Attempt, Database, RetryError
from comptroller.storage.postgres_rows import (
    BUDGET_COLS,
    RES_COLS,
    Conn,
    budget_of,
    insert_events,
    key_columns,
    reservation_of,
    rollback,
    scalar,
    state_of,
)
from comptroller.storage.postgres_settle import commit
from comptroller.storage.postgres_sql import (
    BY_ID,
    BY_KEY,
    INSERT_HOLD,
    LOCK_STATES,
    READ_ACCOUNTS,
    RESERVE_BATCH,
    RESERVE_ONE_TRIP,
    RESERVE_READ,
)
from comptroller.storage.postgres_sweep import sweep_first
from comptroller.storage.rows import new_reservation, refusal_event

__all__ = ["Reserver"]

_CACHE_ENTRIES_MAX = 100_000
_MADE_MAX = 10_000
"""Reservations a store remembers from its own reserves (for their settle's guard keys), at most."""
_SHARDED_LEVELS = frozenset({Level.NAMESPACE, Level.TENANT})


@dataclass(frozen=True, slots=True)
class _Item:
    """A reserve waiting for its batch: the request, its time, the budgets version it was decided from, its
    accounts (budget, scope, period; ids; the shard each tries first, -1 for a row) and its reservation."""

    request: ReserveRequest
    now: datetime
    version: int
    keys: list[tuple[Budget, str, str]]
    ids: list[int]
    starts: list[int]
    reservation: Reservation


_Answer = tuple[str, "str | None", "list[int]", "list[int]", "list[int]"]
"""One item's answer from ``ledger_reserve_batch``: status, the known key's reservation id, and per account the
settled, reserved and alert_pct_fired before its hold; status ``alone`` when the batch did not decide it."""
_ALONE: _Answer = ("alone", None, [], [], [])


@dataclass
class _Budgets:
    """Parsed budgets by exact ``(level, scope)``, valid for one ``meta.budgets_version``."""

    version: int | None = None
    by_scope: dict[tuple[str, str], tuple[Budget, ...]] = field(default_factory=dict)


class Reserver:
    """The reserve path of one :class:`~comptroller.storage.postgres.PostgresStore` and its caches.

    Args:
        db: the store's connections.
        shards: escrow shards a new namespace or tenant account gets (0: none).
        batch_max: reserves per group commit, at most (0 or 1: every reserve alone).
    """

    def __init__(self, db: Database, shards: int, batch_max: int = 0) -> None:
        self._db = db
        self._shards = shards
        self.batcher = (Batcher(self._send, max_items=batch_max, wait_s=db.timeout_s, alone=_ALONE)
                        if batch_max > 1 else None)
        """The group commit of this store's reserves (None: each alone)."""
        self._budgets = _Budgets()
        self._account_ids: dict[tuple[str, str, str], tuple[int, int]] = {}
        """Account id and shard count by ``(budget id, scope, period key)``: neither ever changes."""
        self._made: dict[str, Reservation] = {}
        """Reservations made here and not yet resolved here, oldest first (:meth:`foresee`)."""
        self._lock = threading.Lock()  # guards the caches

    def reserve(self, request: ReserveRequest, now: datetime, guard: AdmitGuard | None = None) -> ReserveResult:
        """Answer a known key; else run the guard, then the budgets; hold the ceiling on every account or refuse.

        Raises:
            LedgerUnavailableError: if the database cannot answer (the call must be refused).
        """
        scopes = request.attribution.scopes()
        general = False
        if guard is None and self.batcher is not None:
            done, general = self._batched(self.batcher, request, now, scopes)
            if done is not None:
                return done
        state_keys = sorted(set(guard.state_keys())) if guard is not None else []

        def op(conn: Conn, attempt: Attempt) -> ReserveResult:
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
                first = conn.execute(RESERVE_READ.format(READ_ACCOUNTS.format(where, where)),
                                     (now, request.idempotency_key, *params, attempt.slow, *params, attempt.slow))
                states = conn.execute(LOCK_STATES, key_columns(state_keys)) if state_keys else None
            rows = first.fetchall()
            seen, due, existing_id = rows[0][:3]
            if seen != version:
                self._forget_budgets()
                raise RetryError
            if due:
                sweep_first(conn, attempt, now)
            if existing_id is not None:
                return self._known_key(conn, request, existing_id)
            by_key = self._learn_accounts([row[3:] for row in rows if row[3] is not None])
            if len(by_key) < len(set(wanted)):
                rollback(conn)
                missing = sorted(set(wanted) - set(by_key))
                with self._lock:  # a remembered id may be gone (a restored or truncated ledger)
                    for key in missing:
                        self._account_ids.pop(key, None)
                levels = {(b.id, s, p): b.level for b, s, p in keys}
                pe.create_accounts(conn, missing, [self._shards if levels[k] in _SHARDED_LEVELS else 0
                                                   for k in missing])
                raise RetryError
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
                raise RetryError
            views = [AccountView(b, s, p, *r[4:7]) for r, (b, s, p) in zip(held, keys, strict=True)]
            starts = [escrow.shard_order(request.idempotency_key, r[pe.ACCOUNT_SHARDS])[0]
                      if r[pe.ACCOUNT_SHARDS] > 0 else -1 for r in held]
            return self._admit(conn, attempt, request, now, guard=guard, views=views, ids=[r[0] for r in held],
                               read=read, starts=starts, locked=locked)

        return self._db.run(op, Attempt(general=general))

    def _batched(self, batcher: Batcher[_Item, _Answer], request: ReserveRequest, now: datetime,
                 scopes: Sequence[tuple[Level, str]]) -> tuple[ReserveResult | None, bool]:
        """Reserve in a group commit when the budgets and accounts are cached: the result, or None and whether
        the batch found the call outside the one-trip plain case (it then runs alone, on the general path)."""
        item = self._item(request, now, scopes)
        if item is None:
            return None, False
        answer = batcher.submit(item)
        return self._answer(item, answer), answer[0] == "general"

    def _item(self, request: ReserveRequest, now: datetime, scopes: Sequence[tuple[Level, str]]) -> _Item | None:
        """The batch item of a reserve whose budgets and accounts are cached; None otherwise (it runs alone)."""
        wanted = [(str(level), key) for level, key in scopes]
        wanted += [(str(level), ANY_SCOPE) for level, key in scopes if key != ANY_SCOPE]
        with self._lock:
            cache = self._budgets
            if cache.version is None or not all(w in cache.by_scope for w in wanted):
                return None
            version, candidates = cache.version, [b for w in wanted for b in cache.by_scope[w]]
            keys = account_keys(scopes, candidates, now)
            known = [self._account_ids.get((b.id, s, p)) for b, s, p in keys]
        ids, starts = [], []
        for k in known:
            if k is None:
                return None
            ids.append(k[0])
            starts.append(escrow.shard_order(request.idempotency_key, k[1])[0] if k[1] > 0 else -1)
        return _Item(request, now, version, keys, ids, starts, new_reservation(uuid.uuid4().hex, request, now))

    def _send(self, items: Sequence[_Item]) -> list[_Answer]:
        """Send a batch of reserves as one call of ``ledger_reserve_batch``; one answer per item.

        A batch whose items read different budget versions, one that found a shard dry and
        one that failed on a statement error (nothing was written) answer ``alone`` for every item.

        Raises:
            LedgerUnavailableError: if the database cannot answer (every item of the batch is refused).
        """
        if len({it.version for it in items}) > 1:
            return [_ALONE] * len(items)
        if len(items) == 1:  # the one-item function costs the server less than a batch of one
            return [self._send_one(items[0])]
        entry_item, accounts, limits, starts = [], [], [], []
        for n, it in enumerate(items, 1):
            for (budget, _, _), account, start in zip(it.keys, it.ids, it.starts, strict=True):
                entry_item.append(n)
                accounts.append(account)
                limits.append(budget.limit_mc)
                starts.append(start)
        reqs = [it.request for it in items]
        attrs = [r.attribution for r in reqs]
        params = (items[0].version, max(it.now for it in items), [it.now for it in items],
                  [it.reservation.id for it in items], [r.idempotency_key for r in reqs], [a.namespace for a in attrs],
                  [a.tenant for a in attrs], [a.agent for a in attrs], [a.conversation for a in attrs],
                  [a.task for a in attrs], [a.phase for a in attrs], [r.model for r in reqs],
                  [r.ceiling_mc for r in reqs], [r.input_tokens_max for r in reqs], [r.output_tokens_max for r in reqs],
                  [it.reservation.expires_at for it in items], [r.sends for r in reqs],
                  [a.conversation_shared for a in attrs], [a.key_id for a in attrs], entry_item, accounts, limits,
                  starts)

        def op(conn: Conn, attempt: Attempt) -> TupleRow | None:
            attempt.commit_sent = True  # one statement in its own transaction: once sent, it may have committed
            return conn.execute(RESERVE_BATCH, params).fetchone()

        try:
            row = self._db.run(op)
        except psycopg.Error:  # a shard ran dry, or an item's values failed a statement: nothing was written
            return [_ALONE] * len(items)
        if row is None:
            return [_ALONE] * len(items)
        statuses, existing, settled, reserved, fired = row
        answers: list[_Answer] = []
        lo = 0
        for n, it in enumerate(items):
            hi = lo + len(it.ids)
            answers.append((statuses[n], existing[n], settled[lo:hi], reserved[lo:hi], fired[lo:hi]))
            lo = hi
        return answers

    def _send_one(self, item: _Item) -> _Answer:
        """Send one reserve as a call of ``ledger_reserve`` (its answer has the batch's shape).

        Raises:
            LedgerUnavailableError: if the database cannot answer (the call is refused).
        """
        request, a = item.request, item.request.attribution
        params = (item.version, item.now, item.ids, [b.limit_mc for b, _, _ in item.keys], item.starts,
                  item.reservation.id, request.idempotency_key, a.namespace, a.tenant, a.agent, a.conversation,
                  a.task, a.phase, request.model, request.ceiling_mc, request.input_tokens_max,
                  request.output_tokens_max, item.reservation.expires_at, request.sends, a.conversation_shared,
                  a.key_id)

        def op(conn: Conn, attempt: Attempt) -> TupleRow | None:
            attempt.commit_sent = True  # one statement in its own transaction: once sent, it may have committed
            return conn.execute(RESERVE_ONE_TRIP, params).fetchone()

        try:
            row = self._db.run(op)
        except psycopg.Error:  # a shard ran dry, or a value failed the statement: nothing was written
            return _ALONE
        return _ALONE if row is None else (row[0], row[1], row[2] or [], row[3] or [], row[4] or [])

    def _answer(self, item: _Item, answer: _Answer) -> ReserveResult | None:
        """The result of a reserve its batch decided (admitted or refused); None when it must run alone."""
        status, _, settled, reserved, fired = answer
        if status == "stale":
            self._forget_budgets()
        if status not in ("ok", "refused"):
            return None
        request, now = item.request, item.now
        views = [AccountView(b, s, p, settled[i], reserved[i], fired[i]) for i, (b, s, p) in enumerate(item.keys)]
        refusal = decide(request.ceiling_mc, views, now)
        if status == "refused" and refusal is not None:
            verdict = Verdict.from_refusal(refusal)
            event = refusal_event(verdict, request, now)

            def log(conn: Conn, attempt: Attempt) -> None:
                attempt.commit_sent = True
                insert_events(conn, [event])

            self._db.run(log)
            return ReserveResult(Code.BUDGET_EXCEEDED, refusal=refusal, verdict=verdict, events=(event,))
        if status == "refused" or refusal is not None:  # the function and the rule disagree: a bug, fail closed
            raise LedgerUnavailableError(f"ledger {self._db.where}: ledger_reserve_batch answered {status!r} where "
                                         "the admission rule did not; the call is refused")
        return ReserveResult(Code.OK, reservation=item.reservation,
                             remaining_mc=remaining_after(request.ceiling_mc, views))

    @staticmethod
    def _known_key(conn: Conn, request: ReserveRequest, existing_id: str) -> ReserveResult:
        """The answer to a reserve whose idempotency key a reservation already has."""
        row = conn.execute(f"SELECT {RES_COLS} FROM reservations WHERE id = %s", (existing_id,)).fetchone()
        rollback(conn)
        if row is None:
            raise RetryError
        found = reservation_of(row)
        if request.same_request(found):
            return ReserveResult(Code.ALREADY_RESERVED, reservation=found)
        return ReserveResult(Code.IDEMPOTENCY_CONFLICT)

    def _reserve_one_trip(self, conn: Conn, attempt: Attempt, request: ReserveRequest, now: datetime, *,
                          version: int, keys: Sequence[tuple[Budget, str, str]]) -> ReserveResult | None:
        """Reserve with no guard in one round trip (the server function ``ledger_reserve``, migration 0008).

        None when the call is not the function's plain case (an account it has not seen, caps to
        rebalance, every shard dry, a lease due after a sweep): the caller takes the general path.
        Raises :class:`RetryError` after a budget change or a sweep.
        """
        with self._lock:
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
            row = conn.execute(RESERVE_ONE_TRIP, (
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
            raise RetryError
        if status == "due":
            sweep_first(conn, attempt, now)
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
            raise LedgerUnavailableError(f"ledger {self._db.where}: ledger_reserve answered {status!r} where the "
                                         "admission rule did not; the call is refused")
        return ReserveResult(Code.OK, reservation=reservation, remaining_mc=remaining_after(request.ceiling_mc, views))

    def _account_filter(self, wanted: Sequence[tuple[str, str, str]]) -> tuple[str, tuple[Any, ...]]:
        """The condition naming the call's accounts (by id when all are known, else by key), and its parameters."""
        with self._lock:
            ids = [self._account_ids.get(k) for k in wanted]
        if all(i is not None for i in ids):
            return BY_ID, ([i[0] for i in ids if i is not None],)
        return BY_KEY, ([k[0] for k in wanted], [k[1] for k in wanted], [k[2] for k in wanted])

    def _learn_accounts(self, rows: Sequence[TupleRow]) -> dict[tuple[str, str, str], TupleRow]:
        """Account rows by key; their ids are remembered (an account never changes id or goes away)."""
        by_key = {(r[1], r[2], r[3]): r for r in rows}
        with self._lock:
            if len(self._account_ids) >= _CACHE_ENTRIES_MAX:
                self._account_ids.clear()
            self._account_ids.update((k, (r[0], r[pe.ACCOUNT_SHARDS])) for k, r in by_key.items())
        return by_key

    def _admit(self, conn: Conn, attempt: Attempt, request: ReserveRequest, now: datetime, *,
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
                commit(conn, attempt, refused, read)
                return ReserveResult(outcome.verdict.code, verdict=outcome.verdict, events=refused.events)
            request = outcome.request or request
        refusal = decide(request.ceiling_mc, views, now)
        if refusal is not None:
            verdict = Verdict.from_refusal(refusal)
            event = refusal_event(verdict, request, now)
            commit(conn, attempt, GuardOutcome(events=(event,)), read)
            return ReserveResult(Code.BUDGET_EXCEEDED, refusal=refusal, verdict=verdict, events=(event,))
        plans = pe.rebalanced(request.ceiling_mc, [v.budget.limit_mc for v in views], ids, starts, locked)
        if plans is None:  # the decision read other totals than the locked shards: read again
            raise RetryError
        reservation = new_reservation(uuid.uuid4().hex, request, now)
        a = request.attribution

        def hold() -> None:
            pe.write_caps(conn, plans)
            conn.execute(INSERT_HOLD.format(pe.HOLD_VALUE), (
                reservation.id, request.idempotency_key, a.namespace, a.tenant, a.agent, a.conversation, a.task,
                a.phase, request.model, request.ceiling_mc, request.input_tokens_max, request.output_tokens_max, now,
                reservation.expires_at, ids, request.sends, a.conversation_shared, a.key_id, ids, starts,
                request.ceiling_mc))

        try:
            commit(conn, attempt, outcome, read, hold)
        except errors.RaiseException as exc:
            if not pe.is_dry(exc):
                raise
            rollback(conn)  # nothing was committed: rebalance under the accounts' locks and hold again
            attempt.slow = True
            raise RetryError from exc
        self._remember(reservation)
        return ReserveResult(Code.OK, reservation=reservation, events=outcome.events,
                             remaining_mc=remaining_after(request.ceiling_mc, views))

    def _remember(self, reservation: Reservation) -> None:
        """Keep a reservation made here until this process resolves it (at most :data:`_MADE_MAX`)."""
        with self._lock:
            if len(self._made) >= _MADE_MAX:
                del self._made[next(iter(self._made))]
            self._made[reservation.id] = reservation

    def foresee(self, reservation_id: str, guard: SettleGuard | None) -> list[StateKey]:
        """The guard's state keys for a reservation this process made (its attribution never changes), so
        they are locked with it in one round trip; empty when unknown here (they are locked after)."""
        with self._lock:
            made = self._made.pop(reservation_id, None)
        return [] if guard is None or made is None else sorted(set(guard.state_keys(made)))

    def _candidates(self, conn: Conn, scopes: Sequence[tuple[Level, str]]) -> tuple[int, list[Budget]]:
        """The budgets set on the call's scopes or their level's ``*`` default, and the version they are from."""
        wanted = [(str(level), key) for level, key in scopes]
        wanted += [(str(level), ANY_SCOPE) for level, key in scopes if key != ANY_SCOPE]
        with self._lock:
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
        with self._lock:
            cache = self._budgets
            if cache.version != version or len(cache.by_scope) >= _CACHE_ENTRIES_MAX:
                cache.by_scope.clear()
                cache.version = version
            cache.by_scope.update(loaded)
        return version, loaded

    def _forget_budgets(self) -> None:
        """Drop the cache: a budget changed since it was read."""
        with self._lock:
            self._budgets.version = None
            self._budgets.by_scope.clear()
