"""The defense timeline of a report: breaker and kill-switch transitions, and runs of defense refusals."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from comptroller.domain.ledger import Event

__all__ = ["TripEntry", "trip_timeline"]


@dataclass
class TripEntry:
    """One line of the defense timeline: a breaker or kill-switch transition, or a run of refusals.

    Attributes:
        ts: when (the first refusal of a run of refusals), ISO-8601 UTC.
        kind: ``breaker``, ``kill_switch`` or ``refusal``.
        code: the transition (``opened``, ``tripped``...) or the refusal code.
        level, scope: where.
        detail: what was seen (the detector, the cooldown, the reason).
        count: refusals of this code, detector and scope (1 for transitions).
        last_ts: the last such refusal, ISO-8601 UTC.
    """

    ts: str
    kind: str
    code: str
    level: str
    scope: str
    detail: str
    count: int = 1
    last_ts: str = ""


_TRANSITION_KEYS = ("mode", "reason", "cooldown_s", "trips", "open_until", "by", "probe_spend_mc")


def trip_timeline(events: Iterable[Event]) -> list[TripEntry]:
    """The defense timeline: breaker and kill-switch transitions, and runs of defense refusals.

    Budget refusals are left out (the refusals table counts them); other refusals are
    grouped by (code, detector, scope) into one entry with the first and last time.
    """
    entries: list[TripEntry] = []
    runs: dict[tuple[str, str, str], TripEntry] = {}
    for e in sorted(events, key=lambda e: e.ts):
        if e.kind in ("breaker", "kill_switch"):
            detail = ", ".join(f"{k}={e.detail[k]}" for k in _TRANSITION_KEYS if e.detail.get(k) is not None)
            entries.append(TripEntry(e.ts.isoformat(), e.kind, e.code, e.level or "-", e.scope or "-", detail))
        elif e.kind == "refusal" and e.detail.get("rule") not in (None, "budgets"):
            detector = str(e.detail.get("detector", "-"))
            key = (e.code, detector, e.scope or "-")
            entry = runs.get(key)
            if entry is None:
                entry = runs[key] = TripEntry(e.ts.isoformat(), "refusal", e.code, e.level or "-", e.scope or "-",
                                              f"rule={e.detail.get('rule')}, detector={detector}", 0)
                entries.append(entry)
            entry.count += 1
            entry.last_ts = e.ts.isoformat()
    return entries
