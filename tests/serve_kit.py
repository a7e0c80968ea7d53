"""`comptroller serve` as a real subprocess for tests: start it until healthy, kill it and its workers at the end.

Shared by the tests that need whole processes (several workers, SIGKILL, a restart on the same
ledger). Every wait is bounded; the processes are SIGKILLed on the way out, so no test leaves a
worker behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def kill_serve(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the workers and the serve parent (no lifespan shutdown), and reap the parent."""
    for pid in children(process.pid) if process.poll() is None else []:
        os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    """Whether `serve` answers /healthz 200 (every worker up, the ledger reachable); fails if it exited."""
    assert process.poll() is None, f"serve exited with {process.returncode}"
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def serve_process(config: Path, db_url: str, *, workers: int = 1, metrics_dir: Path | None = None,
                  ready_s: float = 90.0) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run `comptroller serve --config CONFIG --db DB_URL --workers N` until healthy: ``(process, url)``.

    Args:
        config: the policy file.
        db_url: the ledger URL.
        workers: uvicorn workers.
        metrics_dir: a fresh directory for the workers' shared Prometheus files (None: a temporary one).
        ready_s: the longest wait for /healthz, seconds (then the test fails).
    """
    with (tempfile.TemporaryDirectory(prefix="comptroller-metrics-") as scratch,
          _serve(config, db_url, workers, metrics_dir or Path(scratch), ready_s) as running):
        yield running


@contextmanager
def _serve(config: Path, db_url: str, workers: int, metrics_dir: Path,
           ready_s: float) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    command = [sys.executable, "-c", "from comptroller.cli.main import app; app()", "serve", "--config", str(config),
               "--db", db_url, "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    metrics_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while not ready(url, process):
            assert time.monotonic() < deadline, f"serve was not ready within {ready_s:g} s"
            time.sleep(0.1)
        yield process, url
    finally:
        kill_serve(process)
