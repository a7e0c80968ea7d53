"""What a re-verification round costs a gateway worker (issue 17: durable re-verification).

Every worker runs one round a second (:mod:`comptroller.gateway.reverify`). A round checks the
actions its verifier watches; the first and every ``SCAN_EVERY``-th round also scans every action
row (how a worker learns what other or dead workers left). This measures, on one ledger holding
``--actions`` action rows of which ``--unverified`` are unverified and not yet due:

* ``scan round``: a round that scans every row (the first, then one a minute);
* ``watched round``: a round between scans (reads nothing but the watched map);
* ``one minute``: ``SCAN_EVERY`` rounds in a row, one scan included (what a worker spends a minute).

Usage::

    python benchmarks/bench_reverify.py [--actions 5000] [--unverified 50] [--store sqlite|memory]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime

from comptroller.actions_config import parse_actions
from comptroller.clock import VirtualClock
from comptroller.domain.actions import Action
from comptroller.engine.actions import ActionService
from comptroller.engine.verification import SCAN_EVERY
from comptroller.storage import store_from_url

START = datetime(2026, 11, 2, tzinfo=UTC)


def _service(store_kind: str, actions: int, unverified: int) -> ActionService:
    url = "memory://" if store_kind == "memory" else f"sqlite:///{tempfile.mkdtemp()}/ledger.db"
    store, clock = store_from_url(url), VirtualClock(START)
    policy = parse_actions({"trusted": {"trust_outcome": True},
                            "checked": {"verify_url": "http://127.0.0.1:9/{id}", "verify_backoff_s_start": 3600}})
    service = ActionService(store, clock, policy, fetch=lambda url: (200, ""))
    for i in range(actions):
        platform_ = "checked" if i < unverified else "trusted"
        service.check(Action(f"a{i}", f"tenant{i % 50}", "writer", platform_, "post", f"post number {i}"))
        if i < unverified:
            service.record_outcome(f"tenant{i % 50}", f"a{i}", published=True)
    service.reverify_due()  # every unverified action checked once, re-scheduled an hour later
    return ActionService(store, clock, policy, fetch=lambda url: (200, ""))  # a new worker: nothing watched


def _cpu_ms(run: object) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()  # type: ignore[operator]
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def main() -> None:
    """Build the ledger, then time a scan round, a watched round and a minute of rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=5000)
    parser.add_argument("--unverified", type=int, default=50)
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    args = parser.parse_args()
    service = _service(args.store, args.actions, args.unverified)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f}; {args.store}, {args.actions} action rows, {args.unverified} unverified")
    scan = _cpu_ms(service.reverify_due)
    watched = _cpu_ms(service.reverify_due)
    minute = _cpu_ms(lambda: [service.reverify_due() for _ in range(SCAN_EVERY)])
    print("| round | wall ms | CPU ms |\n|---|---:|---:|")
    for name, (wall_ms, cpu_ms) in [("scan round", scan), ("watched round", watched),
                                    (f"one minute ({SCAN_EVERY} rounds, one scan)", minute)]:
        print(f"| {name} | {wall_ms:,.1f} | {cpu_ms:,.1f} |")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
