"""A worker's background upkeep of exactly-once money: lease renewal and outbox delivery.

Two tasks in the worker's event loop (DESIGN.md rule 12, issue 12):

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import anyio.to_thread

from comptroller.gateway.runtime import Gateway
from comptroller.storage.outbox import Outbox, default_outbox_path

__all__ = ["DELIVER_INTERVAL_S", "DELIVER_INTERVAL_S_MAX", "Upkeep", "start_upkeep"]

log = logging.getLogger("comptroller.gateway")

DELIVER_INTERVAL_S = 0.5
"""How often the deliverer looks at the outbox, seconds (while outcomes wait, and the ledger answers)."""
DELIVER_INTERVAL_S_MAX = 5.0
"""The longest pause between delivery rounds while the ledger stays down, seconds."""
RENEW_SHARE = 1 / 3
"""Leases are renewed every this share of their length: a lease survives two missed renewals."""
_PRUNE_EVERY = timedelta(hours=1)


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
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start both tasks in the running event loop."""
        self._tasks = [asyncio.create_task(self._renewer(), name="comptroller-lease-renewer"),
                       asyncio.create_task(self._deliverer(), name="comptroller-outbox-deliverer")]

    async def aclose(self) -> None:
        """Stop both tasks, then try one last delivery round (the outbox stays open for shutdown's releases)."""
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
        delivered, waiting = await anyio.to_thread.run_sync(self.outbox.drain, self.gw.engine.deliver,
                                                            self.gw.engine.clock.now)
        if delivered:
            self.gw.metrics.outbox_delivered.inc(delivered)
            log.info("outbox: %d outcome(s) delivered to the ledger, %d waiting", delivered, waiting)
        return delivered, waiting

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
