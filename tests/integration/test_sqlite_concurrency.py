"""Racing callers on one SQLite ledger: threads on one store, threads on many stores, processes.

Each race puts a budget on the namespace, the tenant, the agent and the conversation;
one of them (the binding level) admits exactly ``K`` ceilings and the others have room
to spare. Every caller tries to reserve at once (a barrier releases them together)
and settles what it got. Exactly ``K`` must be admitted, no account may ever show
``settled + reserved > limit`` (a monitor reads accounts during the race), and the
usage log must hold one row per admitted call with costs summing to each account.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from comptroller.domain.budgets import Budget
from comptroller.domain.codes import Code
from comptroller.domain.scopes import Level
from comptroller.ports import LedgerStore
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import T0, USAGE, assert_accounts_within_limits, attribution, reserve_request

THREADS = 64
PROCESSES = 8
ATTEMPTS_PER_PROCESS = 4
K = 5
CEILING_MC = 1_000
WHO = attribution("agent", tenant="tenant", conversation="room")
RACE_TIMEOUT_S = 60.0
BUDGETED = (Level.NAMESPACE, Level.TENANT, Level.AGENT, Level.CONVERSATION)


def _install_budgets(path: Path, binding: Level) -> list[Budget]:
    """Budgets on four levels; the binding one admits exactly K ceilings, the others 3K."""
    scopes = dict(WHO.scopes())
    budgets = [Budget(level, scopes[level], CEILING_MC * (K if level is binding else 3 * K)) for level in BUDGETED]
    store = SQLiteStore(path)
    for budget in budgets:
        store.put_budget(budget)
    store.close()
    return budgets


def _cost_of(i: int) -> int:
    """A distinct cost at most the ceiling for caller ``i``."""
    return CEILING_MC - i


def _race(store_for: Callable[[int], LedgerStore], callers: int, monitor: LedgerStore) -> list[tuple[int, Code]]:
    """Run ``callers`` threads that reserve together and settle what they got; a monitor checks accounts."""
    barrier = threading.Barrier(callers, timeout=RACE_TIMEOUT_S)
    done = threading.Event()
    violations: list[str] = []

    def watch() -> None:
        while not done.is_set():
            for a in monitor.accounts():
                if a.settled_mc + a.reserved_mc > a.budget.limit_mc:
                    violations.append(repr(a))

    def call(i: int) -> tuple[int, Code]:
        store = store_for(i)
        barrier.wait()
        result = store.reserve(reserve_request(f"call-{i}", CEILING_MC, who=WHO), T0)
        if result.reservation is not None:
            settled = store.settle(result.reservation.id, USAGE, _cost_of(i), T0 + timedelta(seconds=1))
            assert settled.code is Code.SETTLED
        return i, result.code

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=callers) as pool:
            outcomes = list(pool.map(call, range(callers), timeout=RACE_TIMEOUT_S))
    finally:
        done.set()
        watcher.join(timeout=RACE_TIMEOUT_S)
    assert violations == []
    return outcomes


def _check_ledger(store: LedgerStore, budgets: list[Budget], admitted: list[int]) -> None:
    """Every account holds nothing, stays within its limit, and the usage log matches the admitted calls."""
    spent = sum(_cost_of(i) for i in admitted)
    accounts = store.accounts()
    assert {a.budget.id: (a.settled_mc, a.reserved_mc) for a in accounts} == {b.id: (spent, 0) for b in budgets}
    assert_accounts_within_limits(accounts)
    records = list(store.usage_records())
    assert sorted(r.idempotency_key for r in records) == sorted(f"call-{i}" for i in admitted)
    assert sum(r.cost_mc for r in records) == spent


@pytest.mark.timeout(120)
@pytest.mark.parametrize("binding", BUDGETED)
def test_threads_sharing_one_store_admit_exactly_k(tmp_path: Path, binding: Level) -> None:
    """64 threads on one SQLiteStore object: exactly K are admitted, refusals name the binding level."""
    path = tmp_path / "ledger.db"
    budgets = _install_budgets(path, binding)
    store = SQLiteStore(path)
    try:
        outcomes = _race(lambda _: store, THREADS, store)
        codes = Counter(code for _, code in outcomes)
        assert codes == Counter({Code.OK: K, Code.BUDGET_EXCEEDED: THREADS - K})
        refused = store.reserve(reserve_request("one-more", CEILING_MC, who=WHO), T0)
        assert refused.refusal is not None and refused.refusal.level is binding
        _check_ledger(store, budgets, [i for i, code in outcomes if code is Code.OK])
    finally:
        store.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("binding", [Level.TENANT, Level.CONVERSATION])
def test_threads_with_their_own_connections_admit_exactly_k(tmp_path: Path, binding: Level) -> None:
    """64 threads, each with its own SQLiteStore on the same file: exactly K are admitted, no row is lost."""
    path = tmp_path / "ledger.db"
    budgets = _install_budgets(path, binding)
    stores = [SQLiteStore(path) for _ in range(THREADS)]
    monitor = SQLiteStore(path)
    try:
        outcomes = _race(lambda i: stores[i], THREADS, monitor)
        codes = Counter(code for _, code in outcomes)
        assert codes == Counter({Code.OK: K, Code.BUDGET_EXCEEDED: THREADS - K})
        _check_ledger(monitor, budgets, [i for i, code in outcomes if code is Code.OK])
    finally:
        for store in [*stores, monitor]:
            store.close()


def _process_caller(path: str, worker: int, barrier: multiprocessing.synchronize.Barrier,
                    results: multiprocessing.queues.Queue[tuple[str, str]]) -> None:
    """A spawned process: open its own store, wait for the others, try a few reserves, report the codes."""
    store = SQLiteStore(path)
    try:
        barrier.wait()
        for attempt in range(ATTEMPTS_PER_PROCESS):
            key = f"proc-{worker}-{attempt}"
            result = store.reserve(reserve_request(key, CEILING_MC, who=WHO), T0)
            results.put((key, str(result.code)))
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_processes_racing_on_one_file_admit_exactly_k(tmp_path: Path) -> None:
    """8 spawned processes, each with its own SQLiteStore on the same file: exactly K reservations exist."""
    path = tmp_path / "ledger.db"
    budgets = _install_budgets(path, Level.CONVERSATION)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES, timeout=RACE_TIMEOUT_S)
    results = ctx.Queue()
    procs = [ctx.Process(target=_process_caller, args=(str(path), w, barrier, results)) for w in range(PROCESSES)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=RACE_TIMEOUT_S) for _ in range(PROCESSES * ATTEMPTS_PER_PROCESS)]
        for proc in procs:
            proc.join(timeout=RACE_TIMEOUT_S)
        assert [proc.exitcode for proc in procs] == [0] * PROCESSES
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    codes = Counter(code for _, code in outcomes)
    assert codes == Counter({str(Code.OK): K, str(Code.BUDGET_EXCEEDED): PROCESSES * ATTEMPTS_PER_PROCESS - K})
    store = SQLiteStore(path)
    try:
        assert {a.budget.id: a.reserved_mc for a in store.accounts()} == {b.id: K * CEILING_MC for b in budgets}
        assert_accounts_within_limits(store.accounts())
    finally:
        store.close()


FRESH_FILES = 40


def _process_opener(directory: str, barrier: multiprocessing.synchronize.Barrier,
                    results: multiprocessing.queues.Queue[list[str]]) -> None:
    """A spawned process: open (and so create) each fresh ledger file in turn, report any error."""
    errors: list[str] = []
    barrier.wait()
    for i in range(FRESH_FILES):
        try:
            SQLiteStore(Path(directory) / f"ledger{i}.db").close()
        except Exception as exc:
            errors.append(repr(exc))
    results.put(errors)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_processes_opening_a_fresh_ledger_together_all_succeed(tmp_path: Path) -> None:
    """8 processes creating the same new ledger files at once all open them (WAL switch included)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES, timeout=RACE_TIMEOUT_S)
    results = ctx.Queue()
    procs = [ctx.Process(target=_process_opener, args=(str(tmp_path), barrier, results)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    try:
        errors = [e for _ in procs for e in results.get(timeout=RACE_TIMEOUT_S)]
        for proc in procs:
            proc.join(timeout=RACE_TIMEOUT_S)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    assert errors == []
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES
