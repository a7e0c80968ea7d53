"""A worker's background upkeep: lease renewal, outbox delivery and, on SQLite, WAL checkpoints.

Three tasks in the worker's event loop (DESIGN.md rule 12, issues 12 and 14):

* **Renewal.** Every call in flight (``Gateway.inflight``: admitted, not yet settled or
  released) has its lease renewed every ``ttl_s / 3`` seconds, so a stream or a slow call
  outliving ``ttl_s`` keeps its hold: the budget is never handed out twice while the call
  runs, and nothing settles late. A lease that expires anyway (a dead worker, a ledger down
  for longer than the lease) is charged its ceiling as ``unknown_outcome``.
* **Delivery.** Outcomes the ledger could not take (``Gateway`` keeps them in the durable
  :class:`~comptroller.storage.outbox.Outbox`) are handed to :meth:`Engine.deliver` until
  the ledger has them: at once at start (what a dead predecessor left), then every
  ``DELIVER_INTERVAL_S``, backing off to ``DELIVER_INTERVAL_S_MAX`` while the ledger is down.
  Delivery is idempotent by reservation id, so workers sharing the file may race on it.
* **Checkpoints** (a SQLite ledger). SQLite copies its write-ahead log into the database file
  inside the commit that takes the log past 1000 pages, so about one call in 80 paid for the
  checkpoint's ``fsync`` calls: that was the gateway's p99 tail at c=1 (BENCHMARKS.md, issue
  14). The worker raises that threshold to ``WAL_BACKSTOP_PAGES`` and checkpoints from here
  every ``CHECKPOINT_INTERVAL_S`` on a connection of its own, in a thread (:class:`WalCheckpoints`):
  the log then holds about one interval of writes, and at most ``WAL_BACKSTOP_PAGES`` pages
  (plus one commit) if these checkpoints stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import anyio.to_thread

from comptroller.gateway.runtime import Gateway
from comptroller.storage.outbox import Outbox, default_outbox_path

__all__ = ["CHECKPOINT_INTERVAL_S", "DELIVER_INTERVAL_S", "DELIVER_INTERVAL_S_MAX", "WAL_BACKSTOP_PAGES",
           "Checkpointed", "Upkeep", "WalCheckpoints", "start_upkeep"]

log = logging.getLogger("comptroller.gateway")

DELIVER_INTERVAL_S = 0.5
"""How often the deliverer looks at the outbox, seconds (while outcomes wait, and the ledger answers)."""
DELIVER_INTERVAL_S_MAX = 5.0
"""The longest pause between delivery rounds while the ledger stays down, seconds."""
RENEW_SHARE = 1 / 3
"""Leases are renewed every this share of their length: a lease survives two missed renewals."""
_PRUNE_EVERY = timedelta(hours=1)
CHECKPOINT_INTERVAL_S = 0.25
"""How often the WAL of a SQLite ledger is copied into its file, seconds."""
WAL_BACKSTOP_PAGES = 16_384
"""The WAL size, in pages (64 MiB at SQLite's 4 KiB default), at which a commit checkpoints by itself:
reached only if the upkeep's checkpoints stop."""


@runtime_checkable
class Checkpointed(Protocol):
    """A ledger in a SQLite file (:class:`~comptroller.storage.sqlite.SQLiteStore`); the worker runs its checkpoints."""

    path: str

    def defer_checkpoints(self, backstop_pages: int) -> None:
        """Checkpoint inside a commit only past ``backstop_pages`` WAL pages."""

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int] | None:
        """``PRAGMA wal_checkpoint(mode)`` without waiting: ``(busy, frames, copied)``."""


class WalCheckpoints:
    """Checkpoints of one SQLite ledger, off the request path.

    Each round copies the WAL into the database file with a PASSIVE checkpoint (writers go on
    meanwhile; the next commit then starts the WAL over). A round that finds the WAL unchanged
    since the last one while no call is in flight uses TRUNCATE instead, which empties the WAL
    file (it takes the write lock for that moment and never waits for it; a call meeting it
    goes to the ledger thread).

    Args:
        store: the ledger.
        busy: True while calls are in flight (the worker's ``Gateway.inflight`` is not empty).
    """

    def __init__(self, store: Checkpointed, busy: Callable[[], bool]) -> None:
        self.store = store
        self.busy = busy
        self._wal = store.path + "-wal"
        self._seen: tuple[int, int] | None = None  # the WAL's (size, mtime) after the last round

    def wal_bytes(self) -> int:
        """The WAL file's size now, bytes (0 when there is none)."""
        stat = self._stat()
        return 0 if stat is None else stat[0]

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self._wal)
        except FileNotFoundError:
            return None
        return stat.st_size, stat.st_mtime_ns

    def once(self) -> tuple[int, int, int] | None:
        """One round (blocking: run it in a thread); SQLite's ``(busy, frames, copied)``, None if nothing to do."""
        before = self._stat()
        if before is None or before[0] == 0:
            self._seen = before
            return None
        quiet = before == self._seen and not self.busy()
        result = self.store.checkpoint("TRUNCATE" if quiet else "PASSIVE")
        self._seen = self._stat()
        return result


class Upkeep:
    """The renewal and delivery tasks of one worker (start with :func:`start_upkeep`, stop with :meth:`aclose`).

    Args:
        gateway: the worker's gateway; its ``outbox`` is set to the opened outbox.
        outbox: the durable outbox (shared by the workers).
    """

    def __init__(self, gateway: Gateway, outbox: Outbox) -> None:
        self.gw = gateway
        self.outbox = outbox
        self.renew_interval_s = gateway.engine.ttl_s * RENEW_SHARE
        store = gateway.engine.store
        self.checkpoints = WalCheckpoints(store, lambda: bool(gateway.inflight)) if isinstance(
            store, Checkpointed) and store.path != ":memory:" else None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the tasks in the running event loop (checkpoints only on a SQLite ledger file)."""
        self._tasks = [asyncio.create_task(self._renewer(), name="comptroller-lease-renewer"),
                       asyncio.create_task(self._deliverer(), name="comptroller-outbox-deliverer")]
        if self.checkpoints is not None:
            await anyio.to_thread.run_sync(self.checkpoints.store.defer_checkpoints, WAL_BACKSTOP_PAGES)
            self._tasks.append(asyncio.create_task(self._checkpointer(), name="comptroller-wal-checkpoints"))

    async def aclose(self) -> None:
        """Stop the tasks, then try one last delivery round (the outbox stays open for shutdown's releases)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.deliver_once()

    async def renew_once(self) -> int:
        """Renew the lease of every call in flight; the number renewed (a failure is logged, retried next round)."""
        renewed = 0
        for reservation in list(self.gw.inflight.values()):
            try:
                if await anyio.to_thread.run_sync(self.gw.engine.renew, reservation):
                    renewed += 1
                elif reservation.id in self.gw.inflight:
                    log.warning("lease of reservation %s had run out before renewal: charged its ceiling as "
                                "unknown_outcome until its settle corrects it", reservation.id)
            except Exception:
                log.exception("renewal of reservation %s failed; retrying in %g s", reservation.id,
                              self.renew_interval_s)
        return renewed

    async def deliver_once(self) -> tuple[int, int]:
        """One delivery round: ``(delivered, still waiting)``."""
        deliver = functools.partial(self.gw.engine.deliver, observe=self.gw.count_delivered)
        delivered, waiting = await anyio.to_thread.run_sync(self.outbox.drain, deliver,
                                                            self.gw.engine.clock.now)
        if delivered:
            self.gw.metrics.outbox_delivered.inc(delivered)
            log.info("outbox: %d outcome(s) delivered to the ledger, %d waiting", delivered, waiting)
        return delivered, waiting

    async def _checkpointer(self) -> None:
        assert self.checkpoints is not None
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            try:
                await anyio.to_thread.run_sync(self.checkpoints.once)
            except Exception:
                log.exception("WAL checkpoint of the ledger failed; retrying in %g s (a commit checkpoints by "
                              "itself past %d pages)", CHECKPOINT_INTERVAL_S, WAL_BACKSTOP_PAGES)

    async def _renewer(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval_s)
            await self.renew_once()

    async def _deliverer(self) -> None:
        pause_s = DELIVER_INTERVAL_S
        pruned_at = self.gw.engine.clock.now()
        while True:
            try:
                delivered, waiting = await self.deliver_once()
            except Exception:
                log.exception("outbox delivery failed; retrying in %g s", pause_s)
                delivered, waiting = 0, 1
            stuck = waiting and not delivered  # the ledger still cannot take them: back off
            pause_s = min(pause_s * 2, DELIVER_INTERVAL_S_MAX) if stuck else DELIVER_INTERVAL_S
            now = self.gw.engine.clock.now()
            if now - pruned_at >= _PRUNE_EVERY:
                await anyio.to_thread.run_sync(self.outbox.prune, now)
                pruned_at = now
            await asyncio.sleep(pause_s)


async def start_upkeep(gateway: Gateway) -> Upkeep:
    """Open the worker's outbox (``[gateway] outbox_path``, else beside the ledger), hand it to the gateway
    and the metrics (``comptroller_outbox_*``), and start renewal and delivery.

    Raises:
        sqlite3.OperationalError: if the outbox file cannot be opened (start-up stops: a gateway that
            could lose settles must not serve).
    """
    path = gateway.config.outbox_path or default_outbox_path(gateway.engine.store)
    outbox = await anyio.to_thread.run_sync(Outbox, path)
    gateway.outbox = outbox
    gateway.metrics.watch_outbox(lambda: (outbox.count(), outbox.oldest_pending_age_s(datetime.now(UTC))))
    upkeep = Upkeep(gateway, outbox)
    await upkeep.start()
    return upkeep
