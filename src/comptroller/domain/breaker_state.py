"""A spend-rate breaker's state as a store keeps it, and its flat JSON record (:mod:`comptroller.domain.breaker`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses._checks import parse_level, require_text
from comptroller.domain.defenses._versions import versioner
from comptroller.domain.defenses.baseline import SpendBaseline
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.scopes import Level

__all__ = ["BreakerState", "BreakerStatus", "BreakerTransition", "evolve"]


class BreakerStatus(StrEnum):
    """Where a breaker is (pybreaker's vocabulary)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerTransition(StrEnum):
    """The ``code`` of a ``breaker`` event: what changed."""

    OPENED = "opened"
    REOPENED = "reopened"
    HALF_OPENED = "half_opened"
    CLOSED = "closed"
    RESET = "reset"

@dataclass(frozen=True, slots=True)
class BreakerState:
    """One breaker's state, as a store keeps it (one row per ``(level, scope)``).

    Attributes:
        level, scope: which breaker.
        status: closed, open or half-open.
        version: incremented by every change; the compare-and-set token.
        window_index, window_spend_mc: closed: the aligned window being counted and its spend, mc.
        over_streak, last_over_index: closed: consecutive over windows, the last one's index.
        trips: trips since the breaker last closed (sets the next cooldown).
        opened_at, open_until: open: when it opened and when the cooldown ends (aware UTC).
        probe_window_start, probe_spend_mc: half-open: the probe window's start and spend, mc.
        probe_id, probe_expires_at: half-open: the call holding the probe lease, and its expiry.
        rel: the relative windows' spend and the trailing baseline (counted while closed).
        rel_over_streak, rel_last_over_index: consecutive over relative windows, the last one's index.
        tripped_by: what opened it last: ``threshold`` or ``relative``.
    """

    level: Level
    scope: str
    status: BreakerStatus = BreakerStatus.CLOSED
    version: int = 0
    window_index: int | None = None
    window_spend_mc: int = 0
    over_streak: int = 0
    last_over_index: int | None = None
    trips: int = 0
    opened_at: datetime | None = None
    open_until: datetime | None = None
    probe_window_start: datetime | None = None
    probe_spend_mc: int = 0
    probe_id: str | None = None
    probe_expires_at: datetime | None = None
    rel: SpendBaseline = field(default_factory=SpendBaseline)
    rel_over_streak: int = 0
    rel_last_over_index: int | None = None
    tripped_by: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", parse_level("breaker", self.level))
        require_text("breaker", "scope", self.scope)

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record of this state (datetimes as ISO-8601 text)."""
        opened, until, start, expires = self.opened_at, self.open_until, self.probe_window_start, self.probe_expires_at
        rel = self.rel
        return {
            "level": str(self.level), "scope": self.scope, "status": str(self.status),
            "version": self.version, "window_index": self.window_index,
            "window_spend_mc": self.window_spend_mc, "over_streak": self.over_streak,
            "last_over_index": self.last_over_index, "trips": self.trips,
            "opened_at": None if opened is None else opened.isoformat(),
            "open_until": None if until is None else until.isoformat(),
            "probe_window_start": None if start is None else start.isoformat(), "probe_spend_mc": self.probe_spend_mc,
            "probe_id": self.probe_id, "probe_expires_at": None if expires is None else expires.isoformat(),
            "rel_window_index": rel.window_index, "rel_window_spend_mc": rel.window_spend_mc,
            "rel_baseline_mmc": rel.baseline_mmc, "rel_since": None if rel.since is None else rel.since.isoformat(),
            "rel_over_streak": self.rel_over_streak, "rel_last_over_index": self.rel_last_over_index,
            "tripped_by": self.tripped_by,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> BreakerState:
        """Read a record written by :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        return cls(
            level=parse_level("breaker", rec.get_str(record, "level")), scope=rec.get_str(record, "scope"),
            status=BreakerStatus(rec.get_str(record, "status")), version=rec.get_int(record, "version"),
            window_index=rec.get_opt_int(record, "window_index"),
            window_spend_mc=rec.get_int(record, "window_spend_mc"),
            over_streak=rec.get_int(record, "over_streak"),
            last_over_index=rec.get_opt_int(record, "last_over_index"), trips=rec.get_int(record, "trips"),
            opened_at=rec.get_opt_dt(record, "opened_at"), open_until=rec.get_opt_dt(record, "open_until"),
            probe_window_start=rec.get_opt_dt(record, "probe_window_start"),
            probe_spend_mc=rec.get_int(record, "probe_spend_mc"), probe_id=rec.get_opt_str(record, "probe_id"),
            probe_expires_at=rec.get_opt_dt(record, "probe_expires_at"),
            rel=SpendBaseline.from_record(record, "rel_"),
            rel_over_streak=int(record.get("rel_over_streak") or 0),
            rel_last_over_index=rec.get_opt_int(record, "rel_last_over_index") if "rel_last_over_index" in record
            else None,
            tripped_by=rec.get_opt_str(record, "tripped_by") if "tripped_by" in record else None,
        )


evolve = versioner(BreakerState)
"""``evolve(state, **changes)``: the next version of a valid state (the breaker's own transitions: not validated
again; :func:`~comptroller.domain.defenses._versions.versioner`)."""
