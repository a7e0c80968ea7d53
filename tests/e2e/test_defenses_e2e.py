"""Runaway protection as a user runs it: the CLI, real processes, a real webhook receiver on loopback.

* replay of a real shipped run with an injected 20x retry loop: caught, and the report's
  figures equal an independent computation (genai-prices' own ``calc_price``);
* the kill switch and a breaker survive a process restart (separate processes on one SQLite file);
* one probe in half-open across 4 processes;
* events reach a signed webhook.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import genai_prices

from comptroller.clock import VirtualClock
from comptroller.domain.breaker import BreakerConfig
from comptroller.domain.codes import Code
from comptroller.domain.defenses.breaker_policy import BreakerPolicy
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.scopes import Level
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.notify import verify_signature
from comptroller.prices import PriceBook
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import attribution
from notify.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "data" / "traces" / "chatdev_warehouse.jsonl"
POLICY = ROOT / "policies" / "chatdev.toml"
LOOP_RUN = "chatdev/Matchy Match_THUNLP_20230825101854"  # a median-cost run: 46 calls, about $0.06
START = datetime(2025, 6, 2, 9, tzinfo=UTC)
SMALL = BreakerConfig(threshold_mc=1, window_s=60)  # any spend is over: one answer a minute opens it
TOKENS = 100_000  # $0.015 of gpt-4o-mini input: a call that costs something


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "comptroller"), *args], capture_output=True,
                          text=True, timeout=240, check=False, cwd=ROOT)


def _run_records(run_id: str) -> list[dict[str, object]]:
    lines = TRACES.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["run_id"] == run_id]


def _independent_cost_mc(record: dict[str, object]) -> int:
    """One call's cost by genai-prices' own calculator (not our pricing code), half-up to millicents."""
    usage = genai_prices.Usage(input_tokens=int(record["input_tokens"]),  # type: ignore[call-overload]
                               output_tokens=int(record["output_tokens"]))  # type: ignore[call-overload]
    when = datetime.fromisoformat(str(record["ts"])).replace(tzinfo=UTC)
    price = genai_prices.calc_price(usage, str(record["x_model_resolved"]), provider_id="openai",
                                    genai_request_timestamp=when)
    return int((Decimal(price.total_price) * 100_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_replay_catches_an_injected_20x_loop_and_the_figures_match(tmp_path: Path) -> None:
    """The run re-attempted until it ran 20 times: the first attempt and 3 re-attempts are admitted, the
    other 16 are refused (retry_limit, level task) before they are paid; spend prevented equals 16 times
    the run's cost by genai-prices' own calculator."""
    out = tmp_path / "loop.json"
    done = _cli("replay", str(TRACES), "--policy", str(POLICY), "--db", "memory://",
                "--inject-loop", f"{LOOP_RUN}:20", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    run = _run_records(LOOP_RUN)
    run_cost = sum(_independent_cost_mc(r) for r in run)
    refusals = {(g["level"], g["code"]): g for g in report["refusals"]}
    loop = refusals[("task", "retry_limit")]
    assert loop["calls"] == 16 * len(run)
    assert loop["prevented_mc"] == 16 * run_cost
    (row,) = [g for g in report["by_run"] if g["key"] == LOOP_RUN]
    assert (row["calls"], row["cost_mc"]) == (4 * len(run), 4 * run_cost)
    (trip,) = [t for t in report["trips"] if t["code"] == "retry_limit"]
    assert trip["count"] == 16 * len(run) and "retries_per_day" in trip["detail"]


def test_kill_switch_and_breaker_survive_a_process_restart(tmp_path: Path) -> None:
    """A kill switch tripped by one process refuses calls in the next; a breaker opened before a restart
    is still open after it; `kill off` in a third process lets calls through again."""
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    tripped = _cli("kill", "on", "--namespace", "ns", "--reason", "runaway bill", "--by", "ops", "--db", url)
    assert tripped.returncode == 0, tripped.stderr
    store = SQLiteStore(db)
    engine = Engine(store=store, prices=PriceBook(), clock=VirtualClock(START),
                    defenses=Defenses(breakers=BreakerPolicy(levels={Level.AGENT: SMALL})))
    refused = engine.admit(CallRequest(attribution("a1"), "gpt-4o-mini", input_tokens_max=TOKENS, max_tokens=10))
    assert refused.verdict is not None and refused.verdict.code is Code.KILL_SWITCH
    assert "runaway bill" in refused.verdict.message
    assert _cli("kill", "off", "--namespace", "ns", "--by", "ops", "--db", url).returncode == 0
    for minute in range(3):  # one paid answer in each of three minutes opens the breaker
        engine.clock.set(START + timedelta(minutes=minute))  # type: ignore[attr-defined]
        admitted = engine.admit(CallRequest(attribution("a1"), "gpt-4o-mini", input_tokens_max=TOKENS, max_tokens=10))
        assert admitted.reservation is not None, admitted.verdict
        engine.settle(admitted.reservation, Usage(input_tokens=TOKENS, output_tokens=10))
    store.close()
    listed = _cli("breaker", "list", "--db", url)
    assert listed.returncode == 0 and "open" in listed.stdout and "ns|t1|a1" in listed.stdout
    again = SQLiteStore(db)
    try:
        engine = Engine(store=again, prices=PriceBook(), clock=VirtualClock(START + timedelta(minutes=2)),
                        defenses=Defenses(breakers=BreakerPolicy(levels={Level.AGENT: SMALL})))
        after = engine.admit(CallRequest(attribution("a1"), "gpt-4o-mini", input_tokens_max=TOKENS, max_tokens=10))
        assert after.verdict is not None and after.verdict.code is Code.CIRCUIT_OPEN
    finally:
        again.close()
    reset = _cli("breaker", "reset", "--namespace", "ns", "--tenant", "t1", "--agent", "a1", "--db", url)
    assert reset.returncode == 0 and "closed" in reset.stdout


def _probe_worker(path: str, worker: int, at: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = SQLiteStore(path)
    engine = Engine(store=store, prices=PriceBook(), clock=VirtualClock(datetime.fromisoformat(at)),
                    defenses=Defenses(breakers=BreakerPolicy(levels={Level.AGENT: SMALL})))
    admitted = []
    barrier = threading.Barrier(4)

    def call(k: int) -> None:
        barrier.wait()
        admission = engine.admit(CallRequest(attribution("a1"), "gpt-4o-mini", input_tokens_max=TOKENS, max_tokens=10,
                                             idempotency_key=f"w{worker}-{k}"))
        admitted.append(admission.admitted)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    store.close()
    results.put(sum(admitted))


def test_half_open_admits_exactly_one_probe_across_4_processes(tmp_path: Path) -> None:
    """4 processes x 4 threads race for the probe of one half-open breaker on one SQLite ledger: one wins."""
    path = str(tmp_path / "ledger.db")
    store = SQLiteStore(path)
    clock = VirtualClock(START)
    engine = Engine(store=store, prices=PriceBook(), clock=clock,
                    defenses=Defenses(breakers=BreakerPolicy(levels={Level.AGENT: SMALL})))
    for minute in range(3):
        clock.set(START + timedelta(minutes=minute))
        admitted = engine.admit(CallRequest(attribution("a1"), "gpt-4o-mini", input_tokens_max=TOKENS, max_tokens=10))
        assert admitted.reservation is not None
        engine.settle(admitted.reservation, Usage(input_tokens=TOKENS, output_tokens=10))
    store.close()
    after_cooldown = (START + timedelta(minutes=2, seconds=SMALL.cooldown_s_start)).isoformat()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_probe_worker, args=(path, w, after_cooldown, results)) for w in range(4)]
    for w in workers:
        w.start()
    counts = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert sum(counts) == 1, counts


def test_events_reach_a_signed_webhook(tmp_path: Path) -> None:
    """A replay whose policy names a webhook delivers the loop's refusal events, signed (Standard Webhooks)."""
    receiver = Receiver()
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.read_text(encoding="utf-8") + (
        f'\n[notify]\nlog = false\n[[notify.webhooks]]\nurl = "{receiver.url}"\nsecret = "{secret}"\n'
        "backoff_initial_s = 0.01\n"), encoding="utf-8")
    try:
        done = _cli("replay", str(TRACES), "--policy", str(policy), "--db", "memory://",
                    "--inject-loop", f"{LOOP_RUN}:6")
        assert done.returncode == 0, done.stderr
        assert receiver.wait_for(1)
        codes = []
        for request in receiver.requests:
            verify_signature(secret, request.headers, request.body)
            codes += [e["code"] for e in json.loads(request.body)["data"]["events"]]
    finally:
        receiver.close()
    assert codes.count("retry_limit") == 2 * len(_run_records(LOOP_RUN))
