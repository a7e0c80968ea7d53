"""Ledger events: what owners are told about (alerts, refusals, trips, anomalies).

An event is written in the same transaction as the change it reports, then handed to
the notify sinks after commit (:mod:`comptroller.notify`). This module depends on
nothing else in the domain, so rules that produce events (the defenses' verdicts)
and the ledger records both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Event"]


@dataclass(frozen=True, slots=True)
class Event:
    """Something owners are told about: an alert, a refusal, (later) a breaker trip.

    Attributes:
        ts: when (aware UTC).
        kind: ``alert`` | ``refusal`` | ...
        code: the result code or rule.
        level: the level concerned, if any.
        scope: the scope key concerned, if any.
        detail: JSON-serialisable values seen (limit, spend, threshold...).
    """

    ts: datetime
    kind: str
    code: str
    level: str | None = None
    scope: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
