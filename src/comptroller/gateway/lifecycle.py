"""A gateway worker's life: readiness, the ledger probe, graceful shutdown, death with its parent.

======================  ====================================================================
concern                 rule
======================  ====================================================================
readiness               ``comptroller serve`` gives every worker the expected number of
                        workers (``COMPTROLLER_WORKERS``) and a run directory of its own
                        (``COMPTROLLER_RUN_DIR``); each worker writes a file named by its pid
                        there once its lifespan has started, and removes it at shutdown.
                        ``/healthz`` is ready only when that many live workers are listed.
ledger probe            a thread per worker tries the ledger's write path every
                        ``interval_s`` (1 s; a compare-and-set that never matches: it takes
                        SQLite's write lock or a PostgreSQL transaction, and writes nothing),
                        five times less often while the ledger is down.
                        ``/healthz`` answers from what it last saw; a probe still waiting after
                        ``ledger_timeout_s`` counts as unreachable.
graceful shutdown       on SIGTERM (or SIGINT) uvicorn stops accepting, and calls in flight run
                        on. After ``shutdown_grace_s`` those still running are cut off: each
                        hold still in flight is first settled at its reserved bound (the
                        provider may have billed the call; DESIGN.md rule 12), then the
                        request is cancelled; a client whose answer had not started gets 503
                        ``shutting_down``. uvicorn's own timeout is set later, so it never
                        cuts a call before this does.
death with the parent   a worker asks Linux for SIGTERM when its parent dies
                        (``prctl(PR_SET_PDEATHSIG)``), elsewhere a thread watches the parent pid;
                        either way it then shuts down gracefully as above, so a restarted
                        ``serve`` never finds orphans on its port.
======================  ====================================================================
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comptroller.domain.state import StateKey, StoredState
from comptroller.domain.usage import Usage
from comptroller.gateway.errors import error_response
from comptroller.gateway.runtime import Gateway
from comptroller.ports import LedgerStore

__all__ = ["ENV_PARENT_PID", "ENV_RUN_DIR", "ENV_WORKERS", "LedgerProbe", "Roster", "WorkerLife", "die_with_parent"]

log = logging.getLogger("comptroller.gateway")
ENV_WORKERS = "COMPTROLLER_WORKERS"
ENV_RUN_DIR = "COMPTROLLER_RUN_DIR"
ENV_PARENT_PID = "COMPTROLLER_SERVE_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PROBE_KEY = StateKey("health", "probe")
_DOWN_SLOWDOWN = 5  # probe interval multiplier while the ledger is unreachable


def die_with_parent(parent_pid: int | None = None) -> bool:
    """In a worker process of ``comptroller serve``: get SIGTERM when the parent dies.

    Args:
        parent_pid: the ``serve`` process (default: ``COMPTROLLER_SERVE_PID``); nothing is
            done in that process itself (one worker runs inside it).

    Returns:
        True when this is a worker and the hook is set.
    """
    if parent_pid is None:
        text = os.environ.get(ENV_PARENT_PID, "")
        parent_pid = int(text) if text.isdigit() else None
    if parent_pid is None or parent_pid == os.getpid():
        return False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()
    if os.getppid() != parent_pid:  # the parent died before the hook was set
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


class Roster:
    """The workers of one ``serve``, as files named by pid in its run directory.

    Args:
        run_dir: the directory (None: this process is the only worker).
        expected: how many workers ``serve`` started.
    """

    def __init__(self, run_dir: str | Path | None, expected: int) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.expected = expected
        self._joined = False

    @classmethod
    def from_env(cls) -> Roster:
        """The roster ``comptroller serve`` described in the environment (else one worker, this one)."""
        text = os.environ.get(ENV_WORKERS, "")
        return cls(os.environ.get(ENV_RUN_DIR) or None, int(text) if text.isdigit() else 1)

    def join(self) -> None:
        """List this worker (its lifespan has started)."""
        self._joined = True
        if self.run_dir is not None:
            (self.run_dir / str(os.getpid())).write_text("", encoding="utf-8")

    def leave(self) -> None:
        """Take this worker off the list (it is shutting down)."""
        self._joined = False
        if self.run_dir is not None:
            (self.run_dir / str(os.getpid())).unlink(missing_ok=True)

    def ready(self) -> int:
        """The workers listed and alive."""
        if self.run_dir is None:
            return int(self._joined)
        alive = 0
        for entry in self.run_dir.iterdir():
            if entry.name.isdigit() and _alive(int(entry.name)):
                alive += 1
        return alive


def _alive(pid: int) -> bool:
    """True if ``pid`` runs: it exists and, where ``/proc`` tells, is not a zombie (a killed
    worker its parent has not reaped yet still answers ``kill(pid, 0)``; proc(5), ``stat`` field 3)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True  # no /proc here (or the pid just went): kill(pid, 0) is all we know
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass
class _Seen:
    ok: bool = False
    error: str | None = "not probed yet"
    finished_at: float | None = None
    started_at: float | None = None


class LedgerProbe:
    """A thread that tries the ledger's write path every ``interval_s``; :meth:`reachable` reads memory.

    Args:
        store: the ledger.
        interval_s: time between probes, seconds.
        timeout_s: a probe still running after this long counts as unreachable, seconds.
        clock: monotonic seconds.
    """

    def __init__(self, store: LedgerStore, *, interval_s: float = 1.0, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.interval_s, self.timeout_s, self._clock = store, interval_s, timeout_s, clock
        self._seen = _Seen()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe(self) -> None:
        """One probe: a compare-and-set that can never match (version -1), so nothing is written."""
        self._seen.started_at = self._clock()
        try:
            self.store.put_state(StoredState(_PROBE_KEY, 1, {}), expected_version=-1)
        except Exception as exc:
            self._seen = _Seen(False, f"{exc.__class__.__name__}: {exc}"[:300], self._clock())
        else:
            self._seen = _Seen(True, None, self._clock())

    def start(self) -> None:
        """Probe once now, then every ``interval_s`` in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ledger-probe")
        self._thread.start()

    def stop(self) -> None:
        """Stop probing (the thread ends after its current probe)."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.probe()
            # while the ledger is down a probe waits out the store's own timeout, holding its connection
            # from the calls that need it: probe less often then
            self._stop.wait(self.interval_s if self._seen.ok else self.interval_s * _DOWN_SLOWDOWN)

    def reachable(self) -> tuple[bool, str | None]:
        """Whether the ledger answered the last probe, and why not."""
        seen, now = self._seen, self._clock()
        if seen.started_at is not None and (seen.finished_at is None or seen.finished_at < seen.started_at) \
                and now - seen.started_at > self.timeout_s:
            return False, f"the ledger has not answered a probe for {now - seen.started_at:.1f} s"
        return seen.ok, seen.error


class WorkerLife:
    """One worker's readiness, ledger probe and graceful shutdown (see the module docstring).

    Args:
        roster: the workers of this ``serve``.
        probe: the ledger probe.
        grace_s: how long calls in flight run on after SIGTERM, seconds.
    """

    def __init__(self, roster: Roster, probe: LedgerProbe, *, grace_s: float) -> None:
        self.roster, self.probe, self.grace_s = roster, probe, grace_s
        self.gateway: Gateway | None = None
        self.draining = False
        self._scopes: set[anyio.CancelScope] = set()
        self._restore: list[tuple[int, Any]] = []
        self._timer: threading.Timer | None = None
        self._loop: Any = None

    def start(self, gateway: Gateway) -> None:
        """At lifespan start: hook SIGTERM / SIGINT (main thread only), start the probe, join the roster."""
        self.gateway = gateway
        self._loop = anyio.lowlevel.current_token()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(sig)
                if callable(previous):
                    self._restore.append((sig, previous))
                    signal.signal(sig, self._on_signal(previous))
        self.probe.start()
        self.roster.join()

    def stop(self) -> None:
        """At lifespan end: leave the roster, stop the probe, give the signals back."""
        self.roster.leave()
        self.probe.stop()
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._restore:
            signal.signal(sig, handler)

    def _on_signal(self, previous: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], Any]:
        def handler(sig: int, frame: FrameType | None) -> Any:
            self.begin_drain()
            return previous(sig, frame)
        return handler

    def begin_drain(self) -> None:
        """Shutdown began: report not ready, and cut off what still runs after ``grace_s``."""
        if self.draining:
            return
        self.draining = True
        self.roster.leave()
        log.warning("shutdown: calls in flight may run on for %g s", self.grace_s)
        self._timer = threading.Timer(self.grace_s, self._cut_off_from_thread)
        self._timer.daemon = True
        self._timer.start()

    def _cut_off_from_thread(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nothing left to cut off
            anyio.from_thread.run(self.cut_off, token=self._loop)

    async def cut_off(self) -> int:
        """Settle every hold still in flight at its reserved bound, then cancel its request.

        Returns:
            The number of holds settled at their bound.
        """
        gateway = self.gateway
        pending = [] if gateway is None else list(gateway.inflight.values())
        async with anyio.create_task_group() as group:  # at once: together they take one ledger_timeout_s at most
            for reservation in pending:
                assert gateway is not None
                bound = Usage(input_tokens=reservation.input_tokens_max, output_tokens=reservation.output_tokens_max)
                group.start_soon(gateway.run, gateway.settle, reservation, bound)
        if pending:
            log.warning("shutdown: %d call(s) cut off after %g s, charged at their reserved bound",
                        len(pending), self.grace_s)
        for scope in list(self._scopes):
            scope.cancel()
        return len(pending)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: the status code and body, from memory."""
        reachable, why = self.probe.reachable()
        ready = self.roster.ready()
        status = ("draining" if self.draining else "ledger_unavailable" if not reachable
                  else "starting" if ready < self.roster.expected else "ok")
        body = {"status": status, "ledger": {"reachable": reachable, "error": why},
                "workers": {"ready": ready, "expected": self.roster.expected}}
        return (200 if status == "ok" else 503), body

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """The ASGI middleware that lets :meth:`cut_off` cancel a request (and answer 503 if it can)."""
        async def drained(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = False

            async def tracked_send(message: Message) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            with anyio.CancelScope() as cancel:
                self._scopes.add(cancel)
                try:
                    await app(scope, receive, tracked_send)
                finally:
                    self._scopes.discard(cancel)
            if cancel.cancelled_caught and not started:
                response = error_response(503, "this gateway worker shut down before the call finished; its hold "
                                          "was charged at the reserved bound", type_="api_error",
                                          code="shutting_down", retry=False)
                await response(scope, receive, send)
        return drained
