"""Added latency of the gateway: the same chat calls sent to the stub upstream directly and through
``comptroller serve``, side by side in one run, at concurrency 1, 16 and 64.

Processes, all on 127.0.0.1: the stub upstream (``tests/gateway/stub_upstream.py``, upstream
latency 0, uvicorn + httptools + uvloop), the gateway (``comptroller serve --workers 1`` on a
SQLite ledger with a namespace and a tenant budget and the default defenses: loop
detectors, re-attempt limit, spend-rate breakers), and this load generator. The load
generator is a minimal HTTP/1.1 client on asyncio streams with one keep-alive connection
per concurrent client, so its own cost per request stays small and equal on both sides.
Every request is distinct (the loop detectors would refuse repeats) and of one size.

For each concurrency the direct and gateway runs alternate (``--rounds`` rounds), after a
warm-up; latency is per request (send to last byte), reported as p50/p95/p99 over all
rounds, with requests per second. ``added`` is gateway minus direct at the same percentile.

    python benchmarks/bench_gateway.py                       # print the tables
    python benchmarks/bench_gateway.py --markdown BENCHMARKS.md
    python benchmarks/bench_gateway.py --profile             # cProfile the gateway at c=16
    python benchmarks/bench_gateway.py --concurrency 1 --py-spy gw.txt   # sample it with py-spy instead
    python benchmarks/collapsed.py gw.txt --top 40           # ... and read where its time goes
    python benchmarks/bench_gateway.py --api messages --concurrency 1   # another API's adapter
    python benchmarks/bench_gateway.py --callgrind 300       # user-space instructions per call (valgrind)

``--callgrind N`` runs the gateway under ``valgrind --tool=callgrind --instr-atstart=no``,
warms it up, and counts only the instructions of ``N`` calls at c=1 (``callgrind_control -i``):
the gateway's user-space instructions per call, which the machine's load does not change
(the kernel's share, socket sends included, is not counted). Run it with ``PYTHONPATH`` set
to an older tree's ``src`` for a before/after pair.

``--api`` picks the API of every request (``chat``, ``responses``, ``messages`` with the key in
``x-api-key`` as the anthropic client sends it, ``embeddings``), all through the one metered
pipeline (:mod:`comptroller.gateway.apis`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from comptroller.storage import store_from_url
from comptroller.storage.key_stores import keys_from_url
from comptroller.storage.keys import new_key
from comptroller.storage.migrations import upgrade
from markdown_block import update_block

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "tests" / "gateway" / "stub_upstream.py"
MODEL = "bench-model"
CLAUDE = "bench-claude"
CONCURRENCY = (1, 16, 64)

CONFIG = """
namespace = "bench"
output_cap_tokens = 64
[prices."{model}"]
input_mtok = "0.15"
output_mtok = "0.60"
[[budgets]]
level = "namespace"
limit_usd = "100000"
period = "month"
[[budgets]]
level = "tenant"
tenant = "bench"
limit_usd = "100000"
period = "month"
{defenses}
[prices."{claude}"]
input_mtok = "3"
output_mtok = "15"
[gateway]
[gateway.providers.stub]
base_url = "http://127.0.0.1:{stub_port}/v1"
[gateway.providers.claude]
kind = "anthropic"
base_url = "http://127.0.0.1:{stub_port}/v1"
[gateway.models]
"{model}" = "stub"
"{claude}" = "claude"
"""

DEFENSES_OFF = """
[breakers]
enabled = false
[loops]
enabled = false
[retries]
enabled = false
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process on port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {limit_s} s")


def request_bytes(port: int, key: str | None, i: int, api: str = "chat") -> bytes:
    text = f"Benchmark request {i:09d}."
    path, payload = {
        "chat": ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": text}]}),
        "responses": ("/v1/responses", {"model": MODEL, "input": text}),
        "messages": ("/v1/messages", {"model": CLAUDE, "max_tokens": 64,
                                      "messages": [{"role": "user", "content": text}]}),
        "embeddings": ("/v1/embeddings", {"model": MODEL, "input": text}),
    }[api]
    body = json.dumps(payload)
    header = "x-api-key: {}" if api == "messages" else "authorization: Bearer {}"
    auth = header.format(key) + "\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"{auth}content-length: {len(body)}\r\n\r\n{body}").encode()


async def one_client(port: int, key: str | None, ids: range, latencies: list[float], api: str) -> None:
    """Send requests one after another on one keep-alive connection; record each latency (s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in ids:
            started = time.perf_counter()
            writer.write(request_bytes(port, key, i, api))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"request {i} answered HTTP {status}")
    finally:
        writer.close()


async def load(port: int, key: str | None, concurrency: int, total: int, first_id: int, *,
               api: str = "chat") -> tuple[list[float], float]:
    """``total`` requests from ``concurrency`` clients; the latencies and the wall time, seconds."""
    latencies: list[float] = []
    per = total // concurrency
    started = time.perf_counter()
    await asyncio.gather(*(one_client(port, key, range(first_id + c * per, first_id + (c + 1) * per), latencies, api)
                           for c in range(concurrency)))
    return latencies, time.perf_counter() - started


def cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a process and its live children (uvicorn's workers), from
    Linux ``/proc/PID/stat`` (fields 14 and 15) and ``/proc/PID/task/PID/children``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_s(int(child)) for child in children)


@dataclass
class Stats:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rps: float
    cpu_ms: float | None = None  # CPU of the measured server process per request

    @classmethod
    def of(cls, latencies: list[float], wall_s: float, cpu: float | None = None) -> Stats:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        per = None if cpu is None else cpu / len(latencies) * 1000
        return cls(q[49] * 1000, q[94] * 1000, q[98] * 1000, len(latencies) / wall_s, per)


def measure(stub_port: int, gateway_port: int, key: str, args: argparse.Namespace,
            pids: tuple[int, int]) -> dict[int, tuple[Stats, Stats]]:
    results = {}
    next_id = 0
    for c in args.concurrency:
        total = args.requests * max(1, c // 4) if c > 1 else args.requests
        total -= total % c
        direct: list[float] = []
        via: list[float] = []
        walls = {"direct": 0.0, "gateway": 0.0}
        cpus = {"direct": 0.0, "gateway": 0.0}
        asyncio.run(load(gateway_port, key, c, min(total, 400), next_id, api=args.api))  # warm-up
        next_id += total
        for _ in range(args.rounds):
            before = cpu_s(pids[0])
            lat, wall = asyncio.run(load(stub_port, None, c, total, next_id, api=args.api))
            cpus["direct"] += cpu_s(pids[0]) - before
            direct += lat
            walls["direct"] += wall
            before = cpu_s(pids[1])
            lat, wall = asyncio.run(load(gateway_port, key, c, total, next_id, api=args.api))
            cpus["gateway"] += cpu_s(pids[1]) - before
            via += lat
            walls["gateway"] += wall
            next_id += total
        results[c] = (Stats.of(direct, walls["direct"], cpus["direct"]),
                      Stats.of(via, walls["gateway"], cpus["gateway"]))
        print(f"c={c}: direct {results[c][0]}\n      gateway {results[c][1]}", flush=True)
    return results


def table(results: dict[int, tuple[Stats, Stats]]) -> str:
    lines = ["| concurrency | path | p50 ms | p95 ms | p99 ms | req/s | server CPU ms/req |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for c, (direct, via) in results.items():
        lines.append(f"| {c} | direct to stub | {direct.p50_ms:.2f} | {direct.p95_ms:.2f} | {direct.p99_ms:.2f} "
                     f"| {direct.rps:,.0f} | {direct.cpu_ms:.2f} (stub) |")
        lines.append(f"| {c} | through gateway | {via.p50_ms:.2f} | {via.p95_ms:.2f} | {via.p99_ms:.2f} "
                     f"| {via.rps:,.0f} | {via.cpu_ms:.2f} (gateway) |")
        lines.append(f"| {c} | **added** | **{via.p50_ms - direct.p50_ms:.2f}** | {via.p95_ms - direct.p95_ms:.2f} "
                     f"| **{via.p99_ms - direct.p99_ms:.2f}** | | |")
    return "\n".join(lines)


def callgrind_measure(gateway: subprocess.Popen[bytes], port: int, key: str, calls: int, api: str) -> int:
    """Warm the gateway (running under callgrind) up, then count the instructions of ``calls`` calls at c=1.

    Switching the count on can take longer than the stub's keep-alive (5 s): the gateway's pooled
    connection is then gone and its next call answers 502 (aiohttp does not resend a POST). A few
    primer calls take that; the ones answered 200 are added to the calls counted.

    Returns:
        The calls counted.
    """
    asyncio.run(load(port, key, 1, 200, 0, api=api))
    subprocess.run(["callgrind_control", "-i", "on", str(gateway.pid)], check=True, capture_output=True, timeout=300)
    primed = 0
    for i in range(3):
        try:
            asyncio.run(load(port, key, 1, 1, 900 + i, api=api))
        except RuntimeError:
            continue
        primed += 1
    asyncio.run(load(port, key, 1, calls, 1_000, api=api))
    subprocess.run(["callgrind_control", "-i", "off", str(gateway.pid)], check=True, capture_output=True,
                   timeout=300)
    return calls + primed


def callgrind_total(out: Path) -> int:
    """The instructions (Ir) counted in callgrind's output files ``out.*`` (their ``totals:`` lines)."""
    total = 0
    for path in out.parent.glob(out.name + ".*"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def callgrind_report(gateway: subprocess.Popen[bytes], port: int, key: str, args: argparse.Namespace,
                     out: Path) -> None:
    """``--callgrind``: count, stop the gateway (callgrind writes its file at exit), print instructions per call."""
    counted = callgrind_measure(gateway, port, key, args.callgrind, args.api)
    stop(gateway, 300)
    total = callgrind_total(out)
    if args.callgrind_keep is not None:
        for found in out.parent.glob(out.name + ".*"):
            shutil.copy(found, args.callgrind_keep)  # for callgrind_annotate
    print(f"gateway user-space instructions per call (callgrind, {counted} calls at c=1): {total / counted:,.0f}")


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


def profile_summary(path: Path, limit: int) -> str:
    stats = pstats.Stats(str(path))
    rows = sorted(((key, value) for key, value in stats.stats.items()),  # type: ignore[attr-defined]
                  key=lambda kv: kv[1][3], reverse=True)
    lines = ["| function | calls | own s | cumulative s |", "|---|---:|---:|---:|"]
    shown = 0
    for (file, line, name), (_, calls, own, cumulative, _) in rows:
        if "comptroller" not in file and "httpx" not in file and "sqlite" not in name:
            continue
        short = file.split("site-packages/")[-1].split("src/")[-1]
        lines.append(f"| `{short}:{line} {name}` | {calls:,} | {own:.2f} | {cumulative:.2f} |")
        shown += 1
        if shown >= limit:
            break
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per round at c=1 (x c/4 above)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/gateway rounds per concurrency")
    parser.add_argument("--dir", type=Path, default=None, help="where the ledger file goes (default: a temp dir)")
    parser.add_argument("--defenses", choices=("default", "off"), default="default",
                        help="the policy's default runtime defenses, or budgets only")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--profile", action="store_true", help="run the gateway under cProfile and print the top")
    parser.add_argument("--py-spy", type=Path, default=None, dest="py_spy",
                        help="sample the gateway (and its workers) with py-spy into this collapsed-stack file "
                             "(summarise it with benchmarks/collapsed.py)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables into this file's block")
    parser.add_argument("--db", default=None,
                        help="ledger URL (default: SQLite in the temp dir); a postgresql:// URL gets a fresh schema")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY), help="levels to measure")
    parser.add_argument("--block", default="bench_gateway", help="the BENCHMARKS.md block to write")
    parser.add_argument("--api", choices=("chat", "responses", "messages", "embeddings"), default="chat",
                        help="the API every request uses")
    parser.add_argument("--callgrind", type=int, default=None, metavar="N",
                        help="run the gateway under callgrind and report its instructions per call over N calls "
                             "at c=1 after a warm-up (no latency tables)")
    parser.add_argument("--callgrind-keep", type=Path, default=None, metavar="FILE",
                        help="--callgrind: keep callgrind's output file here (read it with callgrind_annotate)")
    return parser.parse_args(argv)


def ledger_url(db: str | None, work: Path) -> str:
    """The ledger the gateway runs on: SQLite in ``work``, or a fresh schema of the PostgreSQL at ``db``."""
    if db is None:
        return f"sqlite:///{work / 'ledger.db'}"
    if not db.startswith(("postgresql://", "postgres://")):
        return db
    schema = f"bench_gateway_{os.getpid()}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        upgrade(conn, schema=schema)
    return f"{db}{'&' if '?' in db else '?'}options=-csearch_path%3D{schema}"


def bench_key(url: str) -> str:
    """A fresh key of the tenant ``bench`` (agent ``bench-agent``) in the key store at ``url``; its plaintext."""
    record, key = new_key(tenant="bench", agent="bench-agent")
    keys = keys_from_url(url)
    keys.add(record)
    keys.close()
    return key


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        stub_port, gateway_port = free_port(), free_port()
        config = work / "gateway.toml"
        defenses = "" if args.defenses == "default" else DEFENSES_OFF
        config.write_text(CONFIG.format(model=MODEL, claude=CLAUDE, stub_port=stub_port, defenses=defenses),
                          encoding="utf-8")
        url = ledger_url(args.db, work)
        key = bench_key(url)
        stub = start([sys.executable, str(STUB), str(stub_port)], env={**os.environ, "PYTHONPATH": str(STUB.parent)})
        serve = ["serve", "--config", str(config), "--db", url, "--port", str(gateway_port),
                 "--workers", str(args.workers), "--log-level", "warning"]
        prof = work / "gateway.prof"
        runner = work / "serve.py"
        runner.write_text("import sys\nfrom comptroller.cli.main import app\n\n"  # --workers N re-imports it
                          "if __name__ == '__main__':\n    sys.argv[0] = 'comptroller'\n    app()\n")
        cg_out = work / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={cg_out}.%p"]
        gateway = start([*(valgrind if args.callgrind else []), sys.executable,
                         *(["-m", "cProfile", "-o", str(prof)] if args.profile else []), str(runner), *serve])
        try:
            wait_port(stub_port, stub)
            wait_port(gateway_port, gateway, 60 if args.callgrind is None else 900)
            if args.callgrind is not None:
                callgrind_report(gateway, gateway_port, key, args, cg_out)
                return
            spy = None if args.py_spy is None else start(
                ["py-spy", "record", "--pid", str(gateway.pid), "--subprocesses", "--rate", "250", "--format",
                 "raw", "--output", str(args.py_spy), "--gil"])
            results = measure(stub_port, gateway_port, key, args, (stub.pid, gateway.pid))
            if spy is not None:
                stop(spy)
        finally:
            stop(gateway)
            stop(stub)
        ledger = store_from_url(url)
        settled = sum(1 for _ in ledger.usage_records())
        ledger.close()
        print(f"calls settled in the ledger: {settled:,}")
        text = table(results)
        print(text)
        profile = profile_summary(prof, 25) if args.profile else ""
        if args.profile:
            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(30)
        if profile:
            print(profile)
    if args.markdown is not None:
        machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}")
        command = "python benchmarks/bench_gateway.py " + " ".join(sys.argv[1:])
        block = f"Machine: {machine}. Command: `{command}`.\n\n{text}"
        if profile:
            block += f"\n\nProfile of the gateway process (cProfile, sorted by cumulative time):\n\n{profile}"
        update_block(args.markdown, args.block, block)


if __name__ == "__main__":
    main()
