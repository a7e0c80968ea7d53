"""Fan-out cap through the engine: counted from live reservations, atomically, across processes."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from comptroller.clock import VirtualClock
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.defenses.chain import FAN_OUT, Defenses, scoped_key
from comptroller.domain.defenses.fanout import FanOutConfig, InFlight
from comptroller.domain.pricing import ModelPrice
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from comptroller.storage.sqlite import SQLiteStore

START = datetime(2025, 6, 2, 9, tzinfo=UTC)
FLAT = ModelPrice(model="flat", input_mtok=Decimal(0), output_mtok=Decimal(50), source="test")
CAP = 9
WHO = Attribution(namespace="ns", tenant="acme", agent="orchestrator", task="synthesis-1")


def _engine(store: LedgerStore) -> Engine:
    defenses = Defenses(breakers=None, retries=None, loops=None,
                        fan_out=FanOutConfig(max_in_flight={Level.TASK: CAP}))
    return Engine(store=store, prices=PriceBook(overrides={"flat": FLAT}), clock=VirtualClock(START),
                  caps=OutputCaps(default_tokens=100), ttl_s=600.0, defenses=defenses)


def _call(n: int) -> CallRequest:
    return CallRequest(WHO, "flat", input_tokens_max=0, idempotency_key=f"sub-{n}")


def test_calls_past_the_cap_are_refused_and_a_settled_call_frees_its_slot(store: LedgerStore) -> None:
    """With max_in_flight 9, the 10th concurrent call of the task is refused; settling or releasing one
    admits the next."""
    engine = _engine(store)
    held = [engine.admit(_call(n)) for n in range(CAP)]
    assert all(a.admitted for a in held)
    refused = engine.admit(_call(CAP))
    assert refused.code is Code.FAN_OUT_EXCEEDED and refused.verdict is not None
    assert refused.verdict.level is Level.TASK
    assert held[0].reservation is not None and held[1].reservation is not None
    engine.settle(held[0].reservation, Usage(input_tokens=0, output_tokens=10))
    assert engine.admit(_call(CAP)).admitted
    assert engine.admit(_call(CAP + 1)).code is Code.FAN_OUT_EXCEEDED
    engine.release(held[1].reservation)
    assert engine.admit(_call(CAP + 1)).admitted


def _worker(path: str, first: int, count: int, go: multiprocessing.synchronize.Event,
            out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = SQLiteStore(path)
    engine = _engine(store)
    go.wait(30)
    admitted = [n for n in range(first, first + count) if engine.admit(_call(n)).admitted]
    store.close()
    out.put(admitted)


def test_twenty_parallel_calls_with_a_cap_of_nine_across_two_processes(tmp_path: Path) -> None:
    """Two processes each start 10 calls of one task at once on one ledger: exactly 9 are admitted, and the
    task's in-flight row holds exactly those 9 calls."""
    path = str(tmp_path / "ledger.db")
    SQLiteStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(path, first, 10, go, out)) for first in (0, 10)]
    for w in workers:
        w.start()
    go.set()
    admitted = [n for _ in workers for n in out.get(timeout=120)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert len(admitted) == CAP
    store = SQLiteStore(path)
    row = store.state(scoped_key(FAN_OUT, Level.TASK, dict(WHO.scopes())[Level.TASK]))
    store.close()
    assert row is not None
    assert {call for call, _ in InFlight.from_record(row.record).live} == {f"sub-{n}" for n in admitted}
