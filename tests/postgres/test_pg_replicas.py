"""Four replicas, one PostgreSQL ledger: 64 callers racing for a budget of exactly K ceilings.

Four OS processes each run an :class:`Engine` on its own :class:`PostgresStore` (its
own pool) against one schema, with 16 caller threads each: 64 concurrent callers,
released together. A caller that is admitted calls a loopback HTTP "upstream" (a
real socket, counted by the test process), which answers with usage equal to the
call's output and input bounds, so every call costs exactly its ceiling and the
binding budget admits exactly K calls however the race goes. Budgets on the
namespace, tenant, agent (``*``) and the group conversation; the conversation binds.

Checked: exactly K admitted and exactly those K reached the upstream (the same
reservation ids); one usage row each; spend <= limit on every account of every
level, also while the race runs (a monitor reads the accounts); the ledger
reconciles; PostgreSQL detected no deadlock.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from comptroller.clock import SystemClock
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.reconcile import reconcile
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.prices import PriceBook
from comptroller.storage.postgres import PostgresStore
from ledger_kit import assert_accounts_within_limits
from postgres.pg_kit import PG_URL, admin, postgres_store

pytestmark = pytest.mark.slow

PROCESSES = 4
CALLERS_PER_PROCESS = 16
K = 20
MODEL = "gpt-4o-mini"
INPUT_TOKENS_MAX = 1_000
MAX_TOKENS = 200
RACE_TIMEOUT_S = 120.0


class Upstream:
    """A loopback HTTP server standing in for the provider: counts calls and the reservations they carry."""

    def __init__(self) -> None:
        self.reservations: list[str] = []
        lock = threading.Lock()
        seen = self.reservations

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    seen.append(body["reservation_id"])
                answer = json.dumps({"usage": {"prompt_tokens": body["input_tokens_max"],
                                               "completion_tokens": body["max_tokens"]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _who(process: int, caller: int) -> Attribution:
    return Attribution(namespace="ns", tenant=f"t{caller % 4}", agent=f"p{process}-a{caller}", conversation="room",
                       conversation_shared=True)  # one group room shared by the four tenants (rule 1)


def _call_upstream(port: int, reservation_id: str, input_tokens_max: int, max_tokens: int) -> Usage:
    body = json.dumps({"reservation_id": reservation_id, "input_tokens_max": input_tokens_max,
                       "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        usage = json.loads(response.read())["usage"]
    return Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"])


def _replica(schema: str, port: int, process: int, barrier: multiprocessing.synchronize.Barrier,
             out: multiprocessing.queues.Queue[list[tuple[str, str, str | None, str | None]]]) -> None:
    """One gateway replica: an engine on its own store, ``CALLERS_PER_PROCESS`` threads, one call each."""
    store = PostgresStore(PG_URL, schema=schema, min_size=1, max_size=CALLERS_PER_PROCESS)
    engine = Engine(store=store, prices=PriceBook(), clock=SystemClock())
    start = threading.Barrier(CALLERS_PER_PROCESS, timeout=RACE_TIMEOUT_S)

    def caller(i: int) -> tuple[str, str, str | None, str | None]:
        key = f"p{process}-c{i}"
        start.wait()
        admission = engine.admit(CallRequest(attribution=_who(process, i), model=MODEL,
                                             input_tokens_max=INPUT_TOKENS_MAX, max_tokens=MAX_TOKENS,
                                             idempotency_key=key))
        if admission.reservation is None:
            return key, str(admission.code), None, None
        usage = _call_upstream(port, admission.reservation.id, INPUT_TOKENS_MAX, admission.output_tokens_max)
        settled = engine.settle(admission.reservation, usage)
        return key, str(admission.code), admission.reservation.id, str(settled.code)

    barrier.wait(RACE_TIMEOUT_S)
    with ThreadPoolExecutor(CALLERS_PER_PROCESS) as pool:
        results = list(pool.map(caller, range(CALLERS_PER_PROCESS)))
    store.close()
    out.put(results)


def _deadlocks() -> int:
    with admin() as conn:
        row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def ledger() -> Iterator[tuple[PostgresStore, int, list[Budget]]]:
    """A fresh schema with budgets on four levels; the conversation admits exactly K ceilings."""
    store = postgres_store()
    engine = Engine(store=store, prices=PriceBook(), clock=SystemClock())
    probe = engine.admit(CallRequest(attribution=Attribution(namespace="probe"), model=MODEL,
                                     input_tokens_max=INPUT_TOKENS_MAX, max_tokens=MAX_TOKENS))
    assert probe.reservation is not None
    engine.release(probe.reservation)
    ceiling = probe.ceiling_mc
    budgets = [Budget(Level.NAMESPACE, "ns", 3 * K * ceiling), Budget(Level.TENANT, ANY_SCOPE, 2 * K * ceiling),
               Budget(Level.AGENT, ANY_SCOPE, 2 * ceiling), Budget(Level.CONVERSATION, ANY_SCOPE, K * ceiling)]
    for budget in budgets:
        store.put_budget(budget)
    yield store, ceiling, budgets
    store.close()


def test_four_replicas_and_64_callers_never_overshoot_and_only_admitted_calls_reach_upstream(
        ledger: tuple[PostgresStore, int, list[Budget]]) -> None:
    """Exactly K admitted, exactly those K reached the upstream, spend <= limit at every level throughout."""
    store, ceiling, _ = ledger
    schema = store.where.split("(schema ")[1][:-1]
    upstream = Upstream()
    deadlocks_before = _deadlocks()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES + 1)
    out: multiprocessing.queues.Queue[list[tuple[str, str, str | None, str | None]]] = ctx.Queue()
    replicas = [ctx.Process(target=_replica, args=(schema, upstream.port, p, barrier, out)) for p in range(PROCESSES)]
    for r in replicas:
        r.start()
    stop = threading.Event()
    seen: list[int] = []

    def monitor() -> None:
        while not stop.is_set():
            accounts = [a for a in store.accounts() if a.scope != "probe"]
            assert_accounts_within_limits(accounts)
            seen.append(len(accounts))

    watcher = ThreadPoolExecutor(1)
    watching = watcher.submit(monitor)
    try:
        barrier.wait(RACE_TIMEOUT_S)
        results = [row for _ in replicas for row in out.get(timeout=RACE_TIMEOUT_S)]
        for r in replicas:
            r.join(timeout=RACE_TIMEOUT_S)
            assert r.exitcode == 0
    finally:
        stop.set()
        watching.result(timeout=60)
        watcher.shutdown()
        upstream.close()
        for r in replicas:
            if r.is_alive():
                r.kill()

    codes = Counter(code for _, code, _, _ in results)
    assert len(results) == PROCESSES * CALLERS_PER_PROCESS
    assert codes == {Code.OK: K, Code.BUDGET_EXCEEDED: PROCESSES * CALLERS_PER_PROCESS - K}
    admitted = sorted(rid for _, _, rid, _ in results if rid is not None)
    assert sorted(upstream.reservations) == admitted
    assert {settled for _, _, _, settled in results if settled is not None} == {Code.SETTLED}
    records = [r for r in store.usage_records() if r.attribution.namespace == "ns"]
    assert sorted(r.reservation_id for r in records) == admitted
    assert {r.cost_mc for r in records} == {ceiling}
    accounts = [a for a in store.accounts() if a.scope != "probe"]
    assert_accounts_within_limits(accounts)
    room = next(a for a in accounts if a.budget.level is Level.CONVERSATION)
    assert (room.settled_mc, room.reserved_mc) == (K * ceiling, 0)
    assert seen, "the monitor never read the accounts"
    assert reconcile(store.ledger_snapshot()) == []
    assert _deadlocks() == deadlocks_before
