"""Clocks: :class:`SystemClock` is the only reader of the wall clock; :class:`VirtualClock` is set by hand.

Replay and tests drive :class:`VirtualClock`, so every rule runs in virtual time
without sleeping.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["SystemClock", "VirtualClock"]


class SystemClock:
    """The real time, aware UTC."""

    def now(self) -> datetime:
        """The current instant (UTC)."""
        return datetime.now(UTC)


class VirtualClock:
    """A clock that moves only when told to; thread-safe.

    Args:
        start: the initial instant; must be aware (defaults to 2024-01-01T00:00Z).

    Raises:
        ValueError: on a naive datetime, or when moved backwards.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2024, 1, 1, tzinfo=UTC)
        self._check(self._now)
        self._lock = threading.Lock()

    @staticmethod
    def _check(at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("VirtualClock needs aware datetimes (UTC); got a naive one")

    def now(self) -> datetime:
        """The current virtual instant."""
        return self._now

    def set(self, at: datetime) -> None:
        """Move to ``at``. Raises ValueError if ``at`` is earlier than now (time never runs back)."""
        self._check(at)
        with self._lock:
            if at < self._now:
                raise ValueError(f"VirtualClock cannot move back from {self._now.isoformat()} to {at.isoformat()}")
            self._now = at

    def advance(self, seconds: float) -> None:
        """Move forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by a negative {seconds} s")
        with self._lock:
            self._now = self._now + timedelta(seconds=seconds)
