"""Group commit (migration 0009): one store's concurrent reserves and settles sent as one batch, each answered alone.

A batch is one server call, one transaction and one commit. Each item must get the answer it
would get alone in the batch's order: a refusal does not stop the items after it, an item
whose values fail a statement fails only itself (the batch is rolled back and every item runs
alone), and a settle the batch cannot make (unknown, repeated, past its hold) is left to the
general path, which settles it exactly once. Batches are gathered deterministically with
``Batcher.paused``: the test starts one caller at a time and waits until it is queued, so the
batch's order is the callers' order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.scopes import Level, scope_key
from comptroller.storage.postgres import PostgresStore
from comptroller.storage.postgres_batch import Batcher
from ledger_kit import T0, USAGE, attribution, reserve_request
from postgres.pg_kit import PG_URL, admin, new_schema

WAIT_S = 60.0


def _store(shards: int, *, max_size: int = 20) -> PostgresStore:
    return PostgresStore(PG_URL, schema=new_schema(), max_size=max_size, durable=False, escrow_shards=shards)


def _gathered(batcher: Batcher[Any, Any] | None, calls: Sequence[Callable[[], object]]) -> list[object]:
    """Run ``calls`` on threads so they reach ``batcher`` in this order and go in one batch; each one's result
    (or the exception it raised)."""
    assert batcher is not None
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the caller's own error is its result here
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    before = batcher.batches
    with batcher.paused():
        for i, th in enumerate(threads):
            th.start()
            for _ in range(int(WAIT_S / 0.001)):
                if batcher.queued == i + 1:
                    break
                threading.Event().wait(0.001)
            assert batcher.queued == i + 1, "a caller never reached the batcher"
    for th in threads:
        th.join(timeout=WAIT_S)
    assert not any(th.is_alive() for th in threads)
    assert batcher.batches >= before + 1
    return results


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.integers(-3, 50), min_size=1, max_size=24), max_items=st.integers(1, 8))
def test_batcher_answers_each_item_and_a_failed_batch_fails_only_its_own_items(items: list[int],
                                                                               max_items: int) -> None:
    """Every item gets its own answer, except the items sharing a batch with a poisoned one (negative), which
    all get that batch's error; no batch exceeds max_items."""
    sent: list[list[int]] = []

    def send(batch: Sequence[int]) -> list[int]:
        sent.append(list(batch))
        if any(x < 0 for x in batch):
            raise ValueError("poisoned batch")
        return [2 * x for x in batch]

    batcher: Batcher[int, int] = Batcher(send, max_items=max_items, wait_s=WAIT_S, alone=-1)
    results = _gathered(batcher, [lambda x=x: batcher.submit(x) for x in items])
    assert [x for batch in sent for x in batch] == items  # arrival order, each item once
    assert all(len(batch) <= max_items for batch in sent)
    assert len(sent) == -(-len(items) // max_items)  # gathered items go in as few batches as fit
    poisoned = {id(b): any(x < 0 for x in b) for b in sent}
    batch_of = [b for b in sent for _ in b]
    for x, result, batch in zip(items, results, batch_of, strict=True):
        if poisoned[id(batch)]:
            assert isinstance(result, ValueError)
        else:
            assert result == 2 * x


def test_an_item_no_batch_takes_within_its_wait_is_answered_alone() -> None:
    """While a batch stalls, a later item waits at most wait_s, then gets the ``alone`` answer (its caller
    runs it by itself, with its own bounded waits); the stalled batch still gets its own answer."""
    release, sending = threading.Event(), threading.Event()

    def send(batch: Sequence[int]) -> list[int]:
        sending.set()
        release.wait(WAIT_S)
        return list(batch)

    batcher: Batcher[int, int] = Batcher(send, max_items=8, wait_s=0.05, alone=-1)
    stalled: list[int] = []
    first = threading.Thread(target=lambda: stalled.append(batcher.submit(7)))
    first.start()
    assert sending.wait(WAIT_S)
    assert batcher.submit(8) == -1
    assert batcher.queued == 0
    release.set()
    first.join(timeout=WAIT_S)
    assert stalled == [7]


@dataclass
class _Ledger:
    """One store on a fresh schema with a namespace budget, reused by the examples of a Hypothesis test."""

    shards: int
    store: PostgresStore = field(init=False)
    round: int = 0

    def __post_init__(self) -> None:
        self.store = _store(self.shards)


@pytest.fixture(scope="module", params=[0, 4], ids=["rows", "4-shards"])
def ledger(request: pytest.FixtureRequest) -> Any:
    kept = _Ledger(request.param)
    yield kept
    kept.store.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ceilings=st.lists(st.integers(1, 400), min_size=2, max_size=10), limit=st.integers(0, 1500))
def test_a_batch_admits_exactly_what_the_rule_admits_in_its_order(ledger: _Ledger, ceilings: list[int],
                                                                   limit: int) -> None:
    """Reserves gathered into one batch on a fresh namespace of ``limit`` are admitted or refused each as
    the admission rule decides in the batch's order: a refusal does not stop a later item that fits.

    With shards, a batch some item's ceiling finds every shard too small for is dry: its items then run
    alone, concurrently, and rebalance, so only the rule's bounds are checked: what is held fits the
    limit, a refused item did not fit what was left, and the account holds exactly the admitted ceilings."""
    ledger.round += 1
    store, ns = ledger.store, f"ns{ledger.round}"
    store.put_budget(Budget(Level.NAMESPACE, scope_key(ns), limit))
    who = attribution("a1", namespace=ns)
    assert store.reserve(reserve_request(f"r{ledger.round}-warm", 0, who=who), T0).admitted  # learns the accounts
    calls = [lambda n=n, c=c: store.reserve(reserve_request(f"r{ledger.round}-{n}", c, who=who), T0)
             for n, c in enumerate(ceilings)]
    results = _gathered(store.batchers[0], calls)
    codes = [getattr(r, "code", r) for r in results]
    admitted = sum(c for c, code in zip(ceilings, codes, strict=True) if code is Code.OK)
    assert set(codes) <= {Code.OK, Code.BUDGET_EXCEEDED}
    assert admitted <= limit
    assert all(c > limit - admitted for c, code in zip(ceilings, codes, strict=True) if code is not Code.OK)
    [account] = [a for a in store.accounts() if a.budget.scope == scope_key(ns)]
    assert (account.settled_mc, account.reserved_mc) == (0, admitted)
    if ledger.shards:
        return
    held = 0
    for ceiling, result in zip(ceilings, results, strict=True):
        fits = held + ceiling <= limit
        assert getattr(result, "code", result) is (Code.OK if fits else Code.BUDGET_EXCEEDED)
        if fits:
            assert getattr(result, "remaining_mc", None) == limit - held - ceiling
            held += ceiling
        else:
            refusal = getattr(result, "refusal", None)
            assert refusal is not None and (refusal.level, refusal.reserved_mc) == (Level.NAMESPACE, held)


def test_an_item_that_fails_its_statement_fails_alone_and_known_keys_answer_once() -> None:
    """In one batch, a reserve whose key PostgreSQL cannot store raises for its caller only, the others are
    admitted, and a key repeated in the batch is admitted once and answered already_reserved once."""
    store = _store(4)
    try:
        store.put_budget(Budget(Level.NAMESPACE, scope_key("ns"), 10_000))
        assert store.reserve(reserve_request("warm", 10), T0).admitted
        keys = ["k1", "bad\x00key", "k2", "k1"]
        results = _gathered(store.batchers[0], [lambda k=k: store.reserve(reserve_request(k, 100), T0) for k in keys])
        assert isinstance(results[1], psycopg.DataError)
        codes = [getattr(r, "code", None) for r in results]
        # the failed batch's items then run alone, each on its caller's thread: either k1 may come first
        assert codes[2] is Code.OK and sorted((codes[0], codes[3])) == sorted((Code.OK, Code.ALREADY_RESERVED))
        [namespace] = [a for a in store.accounts() if a.budget.level is Level.NAMESPACE]
        assert namespace.reserved_mc == 10 + 2 * 100
    finally:
        store.close()


def test_settles_in_one_batch_each_settle_once_and_leave_the_rest_to_the_general_path() -> None:
    """A batch of settles: plain ones settle, a repeat of one answers already_settled, an unknown id answers
    not found, a charge past a sharded hold settles on the general path (rebalanced); one usage row each."""
    store = _store(4)
    try:
        store.put_budget(Budget(Level.NAMESPACE, scope_key("ns"), 100_000))
        store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 100_000))
        ids = []
        for n in range(4):
            r = store.reserve(reserve_request(f"s{n}", 1_000), T0)
            assert r.reservation is not None
            ids.append(r.reservation.id)
        now = T0 + timedelta(seconds=1)
        plan = [(ids[0], 400), (ids[1], 1_000), (ids[0], 400), ("no-such-id", 5), (ids[2], 1_500), (ids[3], 0)]
        results = _gathered(store.batchers[1], [lambda i=i, c=c: store.settle(i, USAGE, c, now) for i, c in plan])
        assert [getattr(r, "code", r) for r in results] == [
            Code.SETTLED, Code.SETTLED, Code.ALREADY_SETTLED, Code.RESERVATION_NOT_FOUND, Code.SETTLED, Code.SETTLED]
        records = list(store.usage_records())
        assert sorted((r.reservation_id, r.cost_mc) for r in records) == sorted(
            [(ids[0], 400), (ids[1], 1_000), (ids[2], 1_500), (ids[3], 0)])
        for account in store.accounts():
            assert (account.settled_mc, account.reserved_mc) == (400 + 1_000 + 1_500, 0)
            assert account.settled_mc + account.reserved_mc <= account.budget.limit_mc
    finally:
        store.close()


_MONITOR = """
SELECT b.limit_mc, a.settled_mc + coalesce(sum(s.settled_mc), 0), a.reserved_mc + coalesce(sum(s.reserved_mc), 0),
       coalesce(bool_and(s.settled_mc + s.reserved_mc <= s.cap_mc), true)
FROM accounts a JOIN budgets b ON b.id = a.budget_id LEFT JOIN account_shards s ON s.account_id = a.id
GROUP BY a.id, b.limit_mc"""


@pytest.mark.parametrize("shards", [0, 8], ids=["rows", "8-shards"])
def test_two_replicas_x_16_threads_batching_admit_exactly_k_and_never_pass_a_limit(shards: int) -> None:
    """Two stores x 16 threads reserve (and settle every other hold at its ceiling) until refused on a budget
    of K ceilings: exactly K are admitted, batches of several calls formed, and a monitor sampling every
    account and shard throughout never sees settled + reserved past a limit or a shard past its cap."""
    k, ceiling, threads = 60, 1_000, 16
    schema = new_schema()
    stores = [PostgresStore(PG_URL, schema=schema, max_size=threads, durable=False, escrow_shards=shards,
                            timeout_s=60, lock_timeout_s=60) for _ in range(2)]
    stores[0].put_budget(Budget(Level.NAMESPACE, scope_key("ns"), k * ceiling))
    stores[0].put_budget(Budget(Level.AGENT, ANY_SCOPE, k * ceiling))
    stop, violations, samples = threading.Event(), [], [0]
    admitted, failures = [0] * (2 * threads), []
    start = threading.Barrier(2 * threads + 1, timeout=WAIT_S)

    def monitor() -> None:
        with admin() as conn:
            conn.execute(f"SET search_path TO {schema}")
            while not stop.wait(0.002):
                for limit, settled, reserved, within in conn.execute(_MONITOR).fetchall():
                    samples[0] += 1
                    if settled + reserved > limit or not within:
                        violations.append((limit, settled, reserved, within))

    def caller(t: int) -> None:
        store = stores[t % 2]
        who = attribution(f"a{t % 3}")
        try:
            start.wait()
            for n in range(k + 2):
                r = store.reserve(reserve_request(f"t{t}-{n}", ceiling, who=who), T0)
                if r.reservation is None:
                    assert r.code is Code.BUDGET_EXCEEDED
                    return
                admitted[t] += 1
                if n % 2:
                    assert store.settle(r.reservation.id, USAGE, ceiling, T0).code is Code.SETTLED
        except BaseException as exc:  # a failed caller fails the test
            failures.append(repr(exc))

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(2 * threads)]
    watcher = threading.Thread(target=monitor)
    for w in workers:
        w.start()
    watcher.start()
    try:
        start.wait()
        for w in workers:
            w.join(timeout=WAIT_S)
    finally:
        stop.set()
        watcher.join(timeout=30)
    try:
        assert failures == []
        assert sum(admitted) == k
        assert violations == []
        assert samples[0] >= 3
        sent = [(b.batches, b.items) for s in stores for b in s.batchers if b is not None]
        assert sum(items for _, items in sent) > sum(batches for batches, _ in sent), "no batch held two calls"
        [namespace] = [a for a in stores[0].accounts() if a.budget.level is Level.NAMESPACE]
        assert namespace.settled_mc + namespace.reserved_mc == k * ceiling
        assert len(list(stores[0].usage_records())) == sum(n // 2 for n in admitted)  # odd holds were settled
    finally:
        for s in stores:
            s.close()
