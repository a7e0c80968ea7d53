"""The sink port: where committed events go to be told, and :class:`FanOut` over several.

Events are durable in the ledger's ``events`` table before any sink sees them (the
store appends them in the transaction of the ledger change); a sink only notifies.
So a sink may drop a notification under pressure (it counts and logs it), but it
must never block the admit path nor raise into it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from comptroller.domain.ledger import Event

__all__ = ["EventSink", "FanOut"]

_log = logging.getLogger(__name__)


@runtime_checkable
class EventSink(Protocol):
    """A subscriber to committed events.

    Contract:
        ``publish`` returns promptly (it queues or writes a log line, never waits on a
        network) and never raises: failures are logged and counted by the sink.
        ``close`` delivers what is queued, waiting at most ``timeout_s`` seconds, then
        abandons the rest (counted as dropped); it is idempotent. Events published
        after ``close`` are dropped and counted.
    """

    def publish(self, events: Sequence[Event]) -> None:
        """Hand over committed events, oldest first. Never blocks, never raises."""
        ...

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush queued events, waiting at most ``timeout_s`` seconds, and stop."""
        ...


class FanOut:
    """Publishes every event to each of ``sinks`` in order; one failing sink never stops the others.

    Args:
        sinks: the subscribers (an empty list is allowed: publishing then does nothing).
    """

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks: tuple[EventSink, ...] = tuple(sinks)

    def publish(self, events: Sequence[Event]) -> None:
        """Publish ``events`` to every sink; exceptions from a sink are logged, not raised."""
        if not events:
            return
        for sink in self.sinks:
            try:
                sink.publish(events)
            except Exception:
                _log.exception("event sink %s failed to publish %d event(s); they stay in the ledger",
                               type(sink).__name__, len(events))

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every sink, sharing one deadline of ``timeout_s`` seconds among them."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        for sink in self.sinks:
            try:
                sink.close(max(deadline - time.monotonic(), 0.0))
            except Exception:
                _log.exception("event sink %s failed to close", type(sink).__name__)
