"""LogSink: one structured JSON line per event on the stdlib logger ``comptroller.events``.

The message is the event's JSON object (see :mod:`comptroller.notify.payload`); the same
dict rides on the record as ``record.event`` for handlers that format structure
themselves. stdlib logging writes synchronously: to keep slow handlers (files,
syslog) off the admit path, attach them through ``logging.handlers.QueueHandler``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from comptroller.domain.ledger import Event
from comptroller.notify.payload import event_to_dict, event_to_json

__all__ = ["EVENTS_LOGGER", "LogSink"]

EVENTS_LOGGER = "comptroller.events"

_log = logging.getLogger(__name__)


class LogSink:
    """Writes each event as one JSON log line.

    Args:
        level: the stdlib log level of event lines (default ``logging.INFO``).
        logger: the logger to write to (default: ``logging.getLogger("comptroller.events")``).
    """

    def __init__(self, *, level: int = logging.INFO, logger: logging.Logger | None = None) -> None:
        self.level = level
        self.logger = logger or logging.getLogger(EVENTS_LOGGER)

    def publish(self, events: Sequence[Event]) -> None:
        """Log one line per event, in order; a failure is logged and the rest still go out."""
        if not self.logger.isEnabledFor(self.level):
            return
        for event in events:
            try:
                self.logger.log(self.level, event_to_json(event), extra={"event": event_to_dict(event)})
            except Exception:
                _log.exception("could not log event %s/%s; it stays in the ledger", event.kind, event.code)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush the handlers this logger writes to (its own and its ancestors'); ``timeout_s`` is unused."""
        logger: logging.Logger | None = self.logger
        while logger is not None:
            for handler in logger.handlers:
                handler.flush()
            logger = logger.parent if logger.propagate else None
