"""The JSON shape of events on the wire (log lines and webhook bodies).

One event::

    {"ts": "2026-11-21T16:05:41.123456Z", "kind": "breaker", "code": "opened",
     "level": "agent", "scope": "acme/agent:writer", "detail": {"window_spend_mc": 91000}}

A webhook body follows the Standard Webhooks payload shape (``type``, ``timestamp``,
``data``; https://www.standardwebhooks.com/, "Payload structure")::

    {"type": "comptroller.events", "timestamp": "2026-11-21T16:05:41.200000Z",
     "data": {"events": [<event>, ...]}}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from comptroller.domain.ledger import Event

__all__ = ["BATCH_TYPE", "batch_body", "event_to_dict", "event_to_json", "utc_iso"]

BATCH_TYPE = "comptroller.events"


def utc_iso(at: datetime) -> str:
    """``at`` as ISO 8601 in UTC with a ``Z`` suffix (a naive datetime is taken as UTC)."""
    aware = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def event_to_dict(event: Event) -> dict[str, Any]:
    """The wire form of one event: ``ts`` as UTC ISO 8601, the other fields as stored."""
    return {"ts": utc_iso(event.ts), "kind": event.kind, "code": event.code, "level": event.level,
            "scope": event.scope, "detail": dict(event.detail)}


def _dumps(value: Any) -> str:
    # default=str: a stray Decimal or datetime in ``detail`` is sent as text rather than lost.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def event_to_json(event: Event) -> str:
    """One event as a compact JSON object on one line."""
    return _dumps(event_to_dict(event))


def batch_body(events: Sequence[Event], *, created_at: datetime) -> bytes:
    """A webhook body (UTF-8 JSON bytes) carrying ``events`` in order, stamped ``created_at``."""
    return _dumps({"type": BATCH_TYPE, "timestamp": utc_iso(created_at),
                   "data": {"events": [event_to_dict(e) for e in events]}}).encode("utf-8")
