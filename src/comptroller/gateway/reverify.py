"""A worker's re-verification task: unverified actions re-checked as their durable schedule says (issue 17).

Every ``REVERIFY_INTERVAL_S`` (real seconds) the task asks the action guard for the unverified actions
whose ``verify_next_at`` is due on the engine's clock and checks each once
(:meth:`~comptroller.engine.actions.ActionService.reverify_due`). The schedule lives in the actions'
rows in the ledger, not in this process, so a worker started after a crash or a restart resumes what
its predecessor left, and every worker sharing the ledger may run it (a check is counted once).
Checks run in a worker thread of their own, not the ledger thread: a slow platform never delays a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from comptroller.gateway.guard_http import GuardServices
from comptroller.gateway.runtime import Gateway

__all__ = ["REVERIFY_INTERVAL_S", "REVERIFY_INTERVAL_S_MAX", "Reverifier", "start_reverifier"]

log = logging.getLogger("comptroller.gateway")

REVERIFY_INTERVAL_S = 1.0
"""How often a worker looks for due re-verifications, real seconds (the backoff itself is on the engine's clock)."""
REVERIFY_INTERVAL_S_MAX = 30.0
"""The longest pause between rounds while they fail (the ledger is down), real seconds."""


class Reverifier:
    """The re-verification task of one worker (start with :func:`start_reverifier`, stop with :meth:`aclose`).

    Args:
        gateway: the worker's gateway (its engine's store, clock and sinks).
        services: the action and task services of the worker's routes.
        interval_s: the pause between rounds, real seconds.
    """

    def __init__(self, gateway: Gateway, services: GuardServices, interval_s: float = REVERIFY_INTERVAL_S) -> None:
        self.gw, self.services, self.interval_s = gateway, services, interval_s
        self._task: asyncio.Task[None] | None = None

    async def round(self) -> int:
        """One round: check every due action; how many were checked."""
        service = self.services.actions(self.gw)
        # asyncio.to_thread: stopping the worker does not wait for a round's slow GETs (the thread finishes its
        # check, or loses it, on its own; each check is one compare-and-set, never half written)
        checked = await asyncio.to_thread(service.reverify_due)
        if checked:
            log.info("re-verification: %d due action(s) checked", len(checked))
        return len(checked)

    async def start(self) -> None:
        """Start the task in the running event loop."""
        self._task = asyncio.create_task(self._loop(), name="comptroller-action-reverifier")

    async def aclose(self) -> None:
        """Stop the task at once (a check in flight finishes in its thread: written or lost, never half)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        pause_s, failing = self.interval_s, False
        while True:
            try:
                await self.round()
            except Exception:
                pause_s = min(pause_s * 2, REVERIFY_INTERVAL_S_MAX)
                if not failing:  # once per outage, not once a second
                    log.exception("re-verification round failed; retrying, backing off to %g s",
                                  REVERIFY_INTERVAL_S_MAX)
                failing = True
            else:
                if failing:
                    log.info("re-verification rounds work again")
                pause_s, failing = self.interval_s, False
            await asyncio.sleep(pause_s)


async def start_reverifier(gateway: Gateway, services: GuardServices) -> Reverifier:
    """Start the worker's re-verification task on ``services``' action guard."""
    reverifier = Reverifier(gateway, services)
    await reverifier.start()
    return reverifier
