"""Defense state is shared by every replica: a kill switch tripped through one store stops all of them.

Four replica processes each run an :class:`Engine` (every default defense layer on) on
their own :class:`PostgresStore` over one schema. The test drives them in rounds: each
replica makes one call per round and reports the code. Between rounds an admin trips,
then resets, the namespace kill switch through the test process's own store.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
from collections.abc import Iterator
from typing import TypeAlias

import pytest

from comptroller.clock import SystemClock
from comptroller.domain.budgets import Budget
from comptroller.domain.codes import Code
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.reconcile import reconcile
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.engine.admin import Admin
from comptroller.prices import PriceBook
from comptroller.storage.postgres import PostgresStore
from postgres.pg_kit import PG_URL, postgres_store

pytestmark = pytest.mark.slow

REPLICAS = 4
TIMEOUT_S = 60.0
Commands: TypeAlias = "multiprocessing.queues.Queue[str | None]"
Answers: TypeAlias = "multiprocessing.queues.Queue[tuple[int, str, str]]"


def _replica(schema: str, index: int, commands: Commands, answers: Answers) -> None:
    """Answer each command (a call tag) with the code of one admitted-and-settled or refused call."""
    store = PostgresStore(PG_URL, schema=schema, min_size=1, max_size=2)
    engine = Engine(store=store, prices=PriceBook(), clock=SystemClock(), defenses=Defenses())
    while (tag := commands.get(timeout=TIMEOUT_S)) is not None:
        admission = engine.admit(CallRequest(attribution=Attribution(namespace="ns", agent=f"r{index}"),
                                             model="gpt-4o-mini", input_tokens_max=500, max_tokens=100,
                                             idempotency_key=f"r{index}-{tag}"))
        if admission.reservation is not None:
            engine.settle(admission.reservation, Usage(input_tokens=400, output_tokens=50))
        answers.put((index, tag, str(admission.code)))
    store.close()


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    """A fresh ledger with a namespace budget far from its limit."""
    s = postgres_store()
    s.put_budget(Budget(Level.NAMESPACE, "ns", 10**9))
    yield s
    s.close()


def test_a_kill_switch_tripped_through_one_store_refuses_every_replica_until_reset(store: PostgresStore) -> None:
    """Round 1 admitted everywhere; after the trip every replica answers kill_switch; after the reset, ok."""
    schema = store.where.split("(schema ")[1][:-1]
    ctx = multiprocessing.get_context("spawn")
    commands: list[Commands] = [ctx.Queue() for _ in range(REPLICAS)]
    answers: Answers = ctx.Queue()
    replicas = [ctx.Process(target=_replica, args=(schema, i, commands[i], answers)) for i in range(REPLICAS)]
    for r in replicas:
        r.start()

    def round_of(tag: str) -> set[str]:
        for q in commands:
            q.put(tag)
        got = [answers.get(timeout=TIMEOUT_S) for _ in range(REPLICAS)]
        assert sorted(i for i, _, _ in got) == list(range(REPLICAS))
        return {code for _, _, code in got}

    admin = Admin(store, SystemClock())
    try:
        assert round_of("before") == {Code.OK}
        admin.kill(Level.NAMESPACE, "ns", by="test", reason="runaway spend drill")
        assert round_of("tripped") == {Code.KILL_SWITCH}
        admin.unkill(Level.NAMESPACE, "ns", by="test")
        assert round_of("reset") == {Code.OK}
    finally:
        for q in commands:
            q.put(None)
        for r in replicas:
            r.join(timeout=TIMEOUT_S)
            if r.is_alive():
                r.kill()
    assert [r.exitcode for r in replicas] == [0] * REPLICAS
    records = list(store.usage_records())
    assert sorted(r.idempotency_key for r in records) == sorted(
        f"r{i}-{tag}" for i in range(REPLICAS) for tag in ("before", "reset"))
    refusals = [e for e in store.events("refusal") if e.code == Code.KILL_SWITCH]
    assert len(refusals) == REPLICAS
    assert reconcile(store.ledger_snapshot()) == []
