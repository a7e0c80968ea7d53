"""The added cost of rate limits, quotas and wallet floors (issue 15) per admit + settle pair.

The workload is ``bench_ledger``'s (four budget levels, 10 tenants x 5 agents, 40
conversations, a virtual clock moving 10 ms per pair), budgets only otherwise. Three settings,
run interleaved on fresh stores, medians compared within one run (the machine is shared):

* ``no limit guard``: the engine's limits guard replaced by a pass-through (the engine before issue 15);
* ``floor row only``: the default engine: no quota or rate limit, the agent's floor row read (absent);
* ``all limits``: RPM and TPM per key, tenant and agent, a token and a message quota per tenant
  and agent, and a floor on every agent's wallet (prepaid with plenty), so every row is read and
  written at admit and at settle. Nothing is refused.

Usage::

    python benchmarks/bench_limits.py [--pairs 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench_ledger import MODEL, START, STEP_S, attributions, open_store
from comptroller.clock import VirtualClock
from comptroller.domain.codes import Code
from comptroller.domain.held_counts import HeldCount
from comptroller.domain.limits import Limits
from comptroller.domain.quotas import Quota, QuotaUnit
from comptroller.domain.rate_limits import ANY, LimitLevel, RateLimit, RateUnit
from comptroller.domain.scopes import Level
from comptroller.domain.state import AdmitGuard, SettleGuard, StoredState
from comptroller.domain.usage import Usage
from comptroller.domain.wallets.accounts import agent_wallet
from comptroller.domain.wallets.floors import FloorState, floor_key
from comptroller.engine import CallRequest, Engine
from comptroller.prices import PriceBook

HUGE = 10**9


class _PassThrough:
    """Limits that add nothing: the engine's guards as they were before issue 15."""

    def admit(self, inner: AdmitGuard, *_: object) -> AdmitGuard:
        return inner

    def settle(self, inner: SettleGuard, *_: object) -> SettleGuard:
        return inner


ALL = Limits(
    rate_limits=tuple(RateLimit(unit, level, ANY, HUGE) for unit in RateUnit for level in LimitLevel),
    quotas=tuple(Quota(unit, level, "*", HUGE * 1000) for unit in (QuotaUnit.TOKENS, QuotaUnit.MESSAGES)
                 for level in (Level.TENANT, Level.AGENT)))
SETTINGS = ("no limit guard", "floor row only", "all limits")


def _engine(store: object, setting: str, clock: VirtualClock) -> Engine:
    engine = Engine(store=store, prices=PriceBook(), clock=clock, ttl_s=3600.0,  # type: ignore[arg-type]
                    limits=ALL if setting == "all limits" else None)
    if setting == "no limit guard":
        engine.limits = _PassThrough()  # type: ignore[assignment]
    return engine


def _fund(store: object, accounts: Sequence[str]) -> None:
    for account in accounts:
        row = FloorState(account, 0, HUGE * 1000, HeldCount(), 1)
        store.put_state(StoredState(floor_key(account), 1, row.to_record()), expected_version=0)  # type: ignore[attr-defined]


def timed(kind: str, setting: str, pairs: int, workdir: Path, n: int) -> tuple[float, float]:
    """Wall-clock and CPU microseconds per pair of one run on a fresh store."""
    store = open_store(kind, workdir / f"{kind}-{n}.db")
    attrs = [replace(a, key_id=f"key-{a.tenant}") for a in attributions()]
    if setting == "all limits":
        _fund(store, sorted({agent_wallet(a) for a in attrs}))
    clock = VirtualClock(START)
    engine = _engine(store, setting, clock)
    usage = Usage(input_tokens=1200, output_tokens=350)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(pairs):
            admission = engine.admit(CallRequest(attribution=attrs[i % len(attrs)], model=MODEL,
                                                 input_tokens_max=1200, max_tokens=1024, idempotency_key=f"r{n}-{i}"))
            if admission.reservation is None:
                raise SystemExit(f"benchmark call refused: {admission.verdict}")
            clock.advance(STEP_S)
            if engine.settle(admission.reservation, usage).code is not Code.SETTLED:
                raise SystemExit("benchmark settle failed")
        return ((time.perf_counter() - wall) / pairs * 1e6, (time.process_time() - cpu) / pairs * 1e6)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}; {args.pairs:,} pairs per run, median of {args.repeats} interleaved runs")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("memory", "sqlite"):
            samples: dict[str, list[tuple[float, float]]] = {s: [] for s in SETTINGS}
            n = 0
            for _ in range(args.repeats):
                for setting in SETTINGS:
                    samples[setting].append(timed(kind, setting, args.pairs, Path(tmp), n))
                    n += 1
            base = statistics.median(v[1] for v in samples["no limit guard"])
            for setting, values in samples.items():
                w, c = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
                print(f"| {kind} | {setting} | {w:,.0f} | {c:,.0f} | {100 * (c - base) / base:+.0f} % |")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
