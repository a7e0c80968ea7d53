"""Comptroller beside a peer, in one run: the same closed-loop chat calls to a stub upstream on loopback.

Targets (all on 127.0.0.1, each its own process, one stub upstream for all):

* ``direct``: straight to the stub (the floor every row is compared with);
* ``comptroller-1`` / ``comptroller-2``: ``comptroller serve --workers 1|2`` on a SQLite
  ledger, the policy's default defenses (loop detectors, re-attempt limit, breakers),
  a namespace and a tenant budget;
* ``litellm``: LiteLLM's proxy (the version pinned in the ``bench`` extra, run from the
  Python given by ``--litellm-python``, best its own virtualenv: it pins other versions of
  our libraries) with its budget reservation on (``fail_closed_budget_enforcement``). Its
  database-backed keys need Prisma engines, which it downloads at start; offline, the key
  and its ``max_budget`` come from a ``custom_auth`` hook instead (no database, the spend
  counters in the proxy's memory), with ``custom_auth_run_common_checks`` so the budget
  checks and the reservation run as for a stored key.

Load: ``c`` clients, one keep-alive connection each, each sending its next request when the
last answer is in (closed loop), every request distinct, ``max_tokens`` 64. For each
concurrency the targets take turns (``--rounds`` rounds) after a warm-up. Reported per
target: p50 and p99 latency and what the target adds to ``direct`` at the same percentile,
calls/s, and the target's CPU per call (user + system of its processes, from ``/proc``).

Race (``--race K``): a fresh budget of exactly K call ceilings (each target's own ceiling for
the request: comptroller's ``X-Comptroller-Ceiling-Mc``, LiteLLM's "Estimated request cost"
from a probe), then 64 agents send one call each at once while the stub holds every answer
for ``--race-latency-s``, so all 64 are in flight together. A target that keeps its budget
admits at most what fits: K for LiteLLM; for comptroller, the budget over the ceiling each admitted
call held (its answer's ``X-Comptroller-Ceiling-Mc``: near the edge it recounts the input exactly
and holds less than the probe's byte-bound ceiling, so more than K may fit). ``overshoot`` is the
admitted calls beyond that.

    python benchmarks/bench_peers.py --litellm-python /path/to/venv/bin/python
    python benchmarks/bench_peers.py --targets direct comptroller-1 --concurrency 1 --variant \\
        threads-off='ledger_threads = false'      # another comptroller configuration beside the default
    git archive OLD src | tar -x -C /tmp/before     # an older tree beside this one, in the same run:
    python benchmarks/bench_peers.py --targets direct comptroller-1 --source before=/tmp/before/src
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_gateway import ROOT, cpu_s, free_port, stop, wait_port
from comptroller.storage.key_stores import keys_from_url
from comptroller.storage.keys import new_key
from markdown_block import update_block

MODEL = "gpt-4o-mini"  # in LiteLLM's bundled cost map; comptroller is given the same prices
AGENTS = 64
ADMIN_KEY = "bench-peers-admin-key"

STUB_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
import uvicorn
from stub_upstream import StubControl, make_app

control = StubControl(reply_words=16)
inner = make_app(control)


async def app(scope, receive, send):
    # POST /control/latency/SECONDS sets the stub's latency (the race holds answers in flight)
    if scope["type"] == "http" and scope["path"].startswith("/control/latency/"):
        control.latency_s = float(scope["path"].rsplit("/", 1)[1])
        await send({{"type": "http.response.start", "status": 204, "headers": []}})
        await send({{"type": "http.response.body", "body": b""}})
        return
    with control.lock:
        control.requests.clear()  # kept by the stub for tests; unbounded here
        control.paths.clear()
    await inner(scope, receive, send)


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off", access_log=False)
"""

COMPTROLLER_CONFIG = """
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
[gateway]
{gateway_extra}
[gateway.providers.stub]
base_url = "http://127.0.0.1:{stub_port}/v1"
[gateway.models]
"{model}" = "stub"
"""

LITELLM_CONFIG = """
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://127.0.0.1:{stub_port}/v1
      api_key: sk-stub
general_settings:
  master_key: sk-bench-master-{master}
  custom_auth: bench_auth.user_api_key_auth
  custom_auth_run_common_checks: true
  fail_closed_budget_enforcement: true
litellm_settings:
  telemetry: false
  drop_params: true
"""

LITELLM_AUTH = '''
"""A key's budget without a database: the key ``sk-bench-NAME-BUDGETUSD`` has max_budget BUDGETUSD."""
import hashlib

from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    budget = float(api_key.rsplit("-", 1)[1])
    return UserAPIKeyAuth(api_key=api_key, token=hashlib.sha256(api_key.encode()).hexdigest(),
                          key_alias=api_key, max_budget=budget, spend=0.0)
'''


@dataclass
class Target:
    """One server under load: its name, port, process and how a request is authorised."""

    name: str
    port: int
    process: subprocess.Popen[bytes] | None
    key: str | None = None
    race_keys: list[str] = field(default_factory=list)
    kind: str = "direct"  # direct | comptroller | litellm


def body(i: int) -> bytes:
    """Request ``i``'s body: one distinct user message, ``max_tokens`` 64."""
    return json.dumps({"model": MODEL, "max_tokens": 64,
                       "messages": [{"role": "user", "content": f"Benchmark request {i:09d}."}]}).encode()


def request(port: int, key: str | None, i: int, agent: str | None = None) -> bytes:
    payload = body(i)
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    who = f"x-comptroller-agent: {agent}\r\n" if agent else ""
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"{auth}{who}content-length: {len(payload)}\r\n\r\n").encode() + payload


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a keep-alive connection; the status, headers (lower-case) and body."""
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if headers.get("transfer-encoding") == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        payload = b"".join(c[:-2] for c in chunks)
    else:
        payload = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split(" ", 2)[1]), headers, payload


async def one_client(target: Target, ids: range, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        for i in ids:
            started = time.perf_counter()
            status, _, payload = await exchange(reader, writer, request(target.port, target.key, i))
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"{target.name}: request {i} answered HTTP {status}: {payload[:300]!r}")
    finally:
        writer.close()


async def load(target: Target, concurrency: int, total: int, first_id: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    per = total // concurrency
    started = time.perf_counter()
    await asyncio.gather(*(one_client(target, range(first_id + c * per, first_id + (c + 1) * per), latencies)
                           for c in range(concurrency)))
    return latencies, time.perf_counter() - started


@dataclass
class Row:
    p50_ms: float
    p99_ms: float
    calls_s: float
    cpu_ms: float


def measure(targets: list[Target], concurrency: list[int], requests: int, rounds: int) -> dict[int, dict[str, Row]]:
    results: dict[int, dict[str, Row]] = {}
    next_id = 10**6
    for c in concurrency:
        total = requests * max(1, c // 4) if c > 1 else requests
        total -= total % c
        lat: dict[str, list[float]] = {t.name: [] for t in targets}
        wall = dict.fromkeys(lat, 0.0)
        cpu = dict.fromkeys(lat, 0.0)
        for t in targets:  # warm-up
            asyncio.run(load(t, c, min(total, 200), next_id))
            next_id += total
        for _ in range(rounds):
            for t in targets:
                assert t.process is not None
                before = cpu_s(t.process.pid)
                got, seconds = asyncio.run(load(t, c, total, next_id))
                cpu[t.name] += cpu_s(t.process.pid) - before
                lat[t.name] += got
                wall[t.name] += seconds
                next_id += total
        results[c] = {}
        for t in targets:
            q = statistics.quantiles(lat[t.name], n=100, method="inclusive")
            results[c][t.name] = Row(q[49] * 1000, q[98] * 1000, len(lat[t.name]) / wall[t.name],
                                     cpu[t.name] / len(lat[t.name]) * 1000)
            print(f"c={c} {t.name}: {results[c][t.name]}", flush=True)
    return results


async def _post(port: int, path: str, payload: dict[str, object] | None, key: str | None = None,
                method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    data = b"" if payload is None else json.dumps(payload).encode()
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await exchange(reader, writer, (
            f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{auth}"
            f"content-length: {len(data)}\r\n\r\n").encode() + data)
    finally:
        writer.close()


@dataclass(frozen=True)
class RaceRound:
    """One race round of one target: calls admitted, and how many of the calls' held ceilings the budget fits.

    comptroller answers each admitted call with the ceiling it held (``X-Comptroller-Ceiling-Mc``).
    Near a budget's edge it recounts a call's input exactly and holds a tighter ceiling than the
    probe's byte-bound one, so more than K calls may fit the budget of K probe ceilings: ``fit`` is
    the budget over the largest ceiling held (K for LiteLLM, which answers no ceiling).
    """

    admitted: int
    fit: int
    failed: int  # 5xx answers: neither admitted nor refused (503 ledger_unavailable past the 2 s bound...)

    @property
    def overshoot(self) -> int:
        """Calls admitted beyond what the budget fits."""
        return max(0, self.admitted - self.fit)


async def _race_once(target: Target, key: str, first_id: int) -> tuple[list[int | None], int]:
    """64 agents, one call each, at once: per admitted call the ceiling it held (mc; None: not stated), and
    how many answers were server errors (5xx: neither admitted nor refused; LiteLLM refuses with a 4xx)."""
    async def agent(n: int) -> tuple[int, int | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            status, headers, _ = await exchange(reader, writer, request(target.port, key, first_id + n, f"agent-{n}"))
            held = headers.get("x-comptroller-ceiling-mc")
            return status, None if held is None else int(held)
        finally:
            writer.close()

    answers = await asyncio.gather(*(agent(n) for n in range(AGENTS)))
    return [held for status, held in answers if status == 200], sum(s >= 500 for s, _ in answers)


def race(targets: list[Target], stub_port: int, k: int, rounds: int,
         latency_s: float) -> dict[str, list[RaceRound]]:
    """Each budgeted target's race rounds (a fresh budget of K probe ceilings each round)."""
    admitted: dict[str, list[RaceRound]] = {}
    next_id = 10**9
    for t in targets:
        if t.kind == "direct":
            continue
        admitted[t.name] = []
        for r in range(rounds):
            asyncio.run(_post(stub_port, "/control/latency/0", None))
            if t.kind == "comptroller":
                # the probe (tenant race-r, no tenant budget) reads the ceiling; the race runs on a fresh tenant
                status, headers, payload = asyncio.run(_post(t.port, "/v1/chat/completions",
                                                             json.loads(body(next_id)), t.race_keys[r]))
                if status != 200:
                    raise RuntimeError(f"{t.name}: probe answered {status}: {payload[:300]!r}")
                ceiling_mc = int(headers["x-comptroller-ceiling-mc"])
                budget = {"level": "tenant", "tenant": f"race-{rounds + r}", "limit_mc": k * ceiling_mc,
                          "period": "month"}
                status, _, payload = asyncio.run(_post(t.port, "/admin/budgets", budget, ADMIN_KEY, "PUT"))
                if status != 200:
                    raise RuntimeError(f"{t.name}: PUT /admin/budgets answered {status}: {payload[:300]!r}")
                race_key, budget_mc = t.race_keys[rounds + r], k * ceiling_mc
            else:
                probe_key = f"sk-bench-probe{r}-0.000000001"
                status, _, payload = asyncio.run(_post(t.port, "/v1/chat/completions", json.loads(body(next_id)),
                                                       probe_key))
                found = re.search(rb"Estimated request cost: ([0-9.eE+-]+)", payload)
                if found is None:
                    raise RuntimeError(f"{t.name}: no estimate in the probe's answer {status}: {payload[:400]!r}")
                race_key, budget_mc = f"sk-bench-race{r}-{k * float(found[1])!r}", 0
            next_id += 1
            asyncio.run(_post(stub_port, f"/control/latency/{latency_s}", None))
            held, failed = asyncio.run(_race_once(t, race_key, next_id))
            next_id += AGENTS
            known = [h for h in held if h is not None]
            got = RaceRound(len(held), budget_mc // max(known) if known else k, failed)
            admitted[t.name].append(got)
            print(f"race {t.name} round {r}: {got.admitted} admitted of {AGENTS}, {got.fit} fit the budget of "
                  f"{k} probe ceilings (largest ceiling held: {max(known) if known else '-'} mc), {failed} failed",
                  flush=True)
    asyncio.run(_post(stub_port, "/control/latency/0", None))
    return admitted


def start_comptroller(name: str, work: Path, stub_port: int, *, workers: int, extra: str,
                      race_rounds: int, source: str | None = None) -> Target:
    """``comptroller serve`` on a fresh SQLite ledger, with its keys; ``source``: another tree's ``src`` to run."""
    folder = work / name
    folder.mkdir()
    config = folder / "gateway.toml"
    config.write_text(COMPTROLLER_CONFIG.format(model=MODEL, stub_port=stub_port, gateway_extra=extra),
                      encoding="utf-8")
    url = f"sqlite:///{folder / 'ledger.db'}"
    keys = keys_from_url(url)
    record, key = new_key(tenant="bench", agent="bench-agent")
    keys.add(record)
    race_keys = []
    for r in range(2 * race_rounds):
        record, plaintext = new_key(tenant=f"race-{r}", agent=None)
        keys.add(record)
        race_keys.append(plaintext)
    keys.close()
    port = free_port()
    runner = folder / "serve.py"
    runner.write_text("import sys\nfrom comptroller.cli.main import app\n\n"  # workers re-import it
                      "if __name__ == '__main__':\n    sys.argv[0] = 'comptroller'\n    app()\n")
    # output to a file: a pipe nobody reads fills up and blocks the workers (uvicorn then restarts them)
    process = subprocess.Popen([sys.executable, str(runner), "serve", "--config", str(config), "--db", url,
                                "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
                               env={**os.environ, "COMPTROLLER_ADMIN_KEY": ADMIN_KEY,
                                    **({"PYTHONPATH": source} if source else {})},
                               stdout=(folder / "out.log").open("wb"), stderr=subprocess.STDOUT)
    return Target(name, port, process, key, race_keys, "comptroller")


def start_litellm(work: Path, stub_port: int, python: str) -> Target:
    folder = work / "litellm"
    folder.mkdir()
    (folder / "config.yaml").write_text(LITELLM_CONFIG.format(model=MODEL, stub_port=stub_port,
                                                                        master=os.urandom(16).hex()), encoding="utf-8")
    (folder / "bench_auth.py").write_text(LITELLM_AUTH, encoding="utf-8")
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "PYTHONPATH": str(folder), "NO_PROXY": "*", "no_proxy": "*"}
    env.pop("DATABASE_URL", None)
    litellm = str(Path(python).absolute().parent / "litellm")  # absolute: the proxy runs in its own folder
    process = subprocess.Popen([litellm, "--config", str(folder / "config.yaml"), "--port", str(port),
                                "--host", "127.0.0.1", "--num_workers", "1"], cwd=folder, env=env,
                               stdout=(folder / "out.log").open("wb"), stderr=subprocess.STDOUT)
    return Target("litellm", port, process, "sk-bench-load-1000000.0", [], "litellm")


def started(target: Target) -> None:
    """Wait for a target to listen (on a loaded machine LiteLLM's proxy takes minutes to start)."""
    assert target.process is not None
    wait_port(target.port, target.process, limit_s=600)
    print(f"{target.name} listens on {target.port}", flush=True)


def table(results: dict[int, dict[str, Row]], admitted: dict[str, list[RaceRound]], k: int) -> str:
    lines = ["| c | target | p50 ms | p99 ms | added p50 ms | added p99 ms | calls/s | CPU ms/call |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for c, rows in results.items():
        direct = rows.get("direct")
        for name, row in rows.items():
            added = ("", "") if direct is None or name == "direct" else (
                f"{row.p50_ms - direct.p50_ms:+.2f}", f"{row.p99_ms - direct.p99_ms:+.2f}")
            lines.append(f"| {c} | {name} | {row.p50_ms:.2f} | {row.p99_ms:.2f} | {added[0]} | {added[1]} "
                         f"| {row.calls_s:,.0f} | {row.cpu_ms:.2f} |")
    if admitted:
        lines += ["", f"Race: {AGENTS} agents at once for a budget of K = {k} probe ceilings, per round:", "",
                  "| target | admitted per round | fit at the ceilings held | failed (5xx) "
                  "| overshoot (admitted beyond fit) |", "|---|---|---|---|---:|"]
        for name, got in admitted.items():
            lines.append(f"| {name} | {', '.join(str(g.admitted) for g in got)} | {', '.join(str(g.fit) for g in got)} "
                         f"| {', '.join(str(g.failed) for g in got)} | {sum(g.overshoot for g in got)} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["direct", "comptroller-1", "comptroller-2", "litellm"])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=TOML",
                        help="another comptroller (1 worker) with these [gateway] lines, e.g. "
                             "threads-off='ledger_threads = false'")
    parser.add_argument("--source", action="append", default=[], metavar="NAME=SRC",
                        help="another comptroller (1 worker) run from another source tree's src directory, e.g. "
                             "before='/tmp/before/src' (git archive of an older commit): before and after in one run")
    parser.add_argument("--litellm-python", default=None, help="the Python of a virtualenv with the bench extra")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--requests", type=int, default=400, help="requests per round at c=1 (x c/4 above)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--race", type=int, default=10, metavar="K", help="budget in call ceilings (0: no race)")
    parser.add_argument("--race-rounds", type=int, default=2)
    parser.add_argument("--race-latency-s", type=float, default=1.0)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--block", default="bench_peers")
    args = parser.parse_args(argv)
    if "litellm" in args.targets and args.litellm_python is None:
        parser.error("--litellm-python is needed for the litellm target (or leave litellm out of --targets)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stub_port = free_port()
        runner = work / "stub.py"
        runner.write_text(STUB_RUNNER.format(tests=str(ROOT / "tests" / "gateway")), encoding="utf-8")
        stub = subprocess.Popen([sys.executable, str(runner), str(stub_port)], stdout=subprocess.DEVNULL,
                                stderr=(work / "stub.log").open("wb"))
        targets = [Target("direct", stub_port, stub)]
        try:
            wait_port(stub_port, stub)
            for name in args.targets:
                if name.startswith("comptroller-"):
                    targets.append(start_comptroller(name, work, stub_port, workers=int(name.split("-")[1]),
                                                     extra="", race_rounds=args.race_rounds))
                elif name == "litellm":
                    targets.append(start_litellm(work, stub_port, args.litellm_python))
            for variant in args.source:
                name, _, source = variant.partition("=")
                targets.append(start_comptroller(name, work, stub_port, workers=1, extra="",
                                                 race_rounds=args.race_rounds, source=source))
            for variant in args.variant:
                name, _, extra = variant.partition("=")
                targets.append(start_comptroller(name, work, stub_port, workers=1, extra=extra,
                                                 race_rounds=args.race_rounds))
            for t in targets[1:]:
                started(t)
            time.sleep(2)  # every worker up
            measured = [t for t in targets if t.name in args.targets or t.kind == "comptroller"]
            results = measure(measured, args.concurrency, args.requests, args.rounds)
            admitted = race(measured, stub_port, args.race, args.race_rounds, args.race_latency_s) if args.race else {}
        finally:
            for t in reversed(targets):
                if t.process is not None:
                    stop(t.process)
        text = table(results, admitted, args.race)
        print(text)
    if args.markdown is not None:
        load = os.getloadavg()
        block = (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                 f"load average {load[0]:.1f} at the end of the run. Command: "
                 f"`python benchmarks/bench_peers.py {' '.join(sys.argv[1:])}`.\n\n{text}")
        update_block(args.markdown, args.block, block)


if __name__ == "__main__":
    main()
