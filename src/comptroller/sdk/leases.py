"""Keep the leases of calls in flight alive: a stream or a slow call outlasting its lease is renewed.

A reservation is a lease (DESIGN.md rule 2): a call still running when its lease expires is
charged its ceiling as ``unknown_outcome`` (rule 12) until its settle corrects it, and the
budget meanwhile shows money that is not really gone. :class:`LeaseKeeper` renews every
held lease (``Engine.renew``) each third of its length, from one daemon thread per
:class:`~comptroller.sdk.governor.Comptroller`, started when the first call is held and
ending when none is. A renewal that fails (ledger unreachable) is logged and tried again at
the next tick; one the ledger answers False (already resolved or expired) stops renewing
that lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from comptroller.domain.ledger import Reservation

__all__ = ["LeaseKeeper"]

log = logging.getLogger("comptroller.sdk")

RENEWALS_PER_LEASE = 3
"""Renew when a third of the lease has passed since the last renewal, so two ticks can be late."""


@dataclass
class _Held:
    reservation: Reservation
    interval_s: float
    due: float


class LeaseKeeper:
    """Renews the leases of the calls in flight.

    Args:
        renew: extends one lease to now + its length (``Engine.renew``); False when the lease is gone.
        monotonic: the clock ticks are read from (injectable for tests).
        background: run the ticks in a daemon thread (False: the caller calls :meth:`tick`).
    """

    def __init__(self, renew: Callable[[Reservation], bool], *, monotonic: Callable[[], float] = time.monotonic,
                 background: bool = True) -> None:
        self._renew, self._monotonic, self._background = renew, monotonic, background
        self._held: dict[str, _Held] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.renewals = 0

    def hold(self, reservation: Reservation) -> None:
        """Start renewing ``reservation``'s lease (every third of its length)."""
        length_s = (reservation.expires_at - reservation.created_at).total_seconds()
        interval_s = max(length_s / RENEWALS_PER_LEASE, 0.001)
        with self._wake:
            self._held[reservation.id] = _Held(reservation, interval_s, self._monotonic() + interval_s)
            if self._background and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="comptroller-leases", daemon=True)
                self._thread.start()
            self._wake.notify()

    def drop(self, reservation: Reservation) -> None:
        """Stop renewing ``reservation``'s lease (the call was settled or released)."""
        with self._wake:
            self._held.pop(reservation.id, None)
            self._wake.notify()

    @property
    def held(self) -> int:
        """Leases being renewed now."""
        with self._wake:
            return len(self._held)

    def tick(self) -> float | None:
        """Renew every lease that is due.

        Returns:
            Seconds until the next one is due, or None when nothing is held.
        """
        now = self._monotonic()
        with self._wake:
            due = [h for h in self._held.values() if h.due <= now]
        for held in due:
            try:
                alive = self._renew(held.reservation)
            except Exception:  # the ledger is unreachable: keep the lease, try at the next tick
                log.exception("renewing the lease of reservation %s failed; retrying", held.reservation.id)
                continue
            with self._wake:
                self.renewals += 1
                if not alive:
                    self._held.pop(held.reservation.id, None)
                else:
                    held.due = now + held.interval_s
        with self._wake:
            if not self._held:
                return None
            return max(0.0, min(h.due for h in self._held.values()) - self._monotonic())

    def _run(self) -> None:
        while True:
            wait_s = self.tick()
            with self._wake:
                if not self._held:
                    self._thread = None
                    return
                if wait_s is not None:  # None: a lease was held since the tick; tick again at once
                    self._wake.wait(timeout=wait_s)
