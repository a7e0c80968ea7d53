"""A spend-rate breaker's state as a store keeps it, and its flat JSON record (:mod:`comptroller.domain.breaker`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from comptroller.domain.breaker_config import BreakerConfig
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses._checks import parse_level, require_text
from comptroller.domain.defenses._versions import versioner
from comptroller.domain.defenses.baseline import SpendBaseline
from comptroller.domain.defenses.state_rows import JSON_INT_MAX, JSON_INT_MIN, EncodedRecord
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.defenses.windows import epoch_seconds
from comptroller.domain.scopes import Level

__all__ = ["COUNTED_FIELDS", "BreakerState", "BreakerStatus", "BreakerTransition", "ClosedCounters", "closed_counters",
           "count_closed", "count_closed_record", "counted_record", "evolve"]


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


_RECORD_KEYS = frozenset(BreakerState(Level.AGENT, "x").to_record())


def count_closed_record(record: Mapping[str, JsonScalar], config: BreakerConfig, cost_mc: int,
                        now: datetime) -> Mapping[str, JsonScalar] | None:
    """The common settle of a closed breaker, on its record: what ``record_spend(...).state.to_record()`` gives.

    A settle that stays in the current relative window and crosses no threshold (the fixed window
    at or below ``threshold_mc``, the relative window at or below its floor) only adds the cost to
    the window counters; this computes that record without building a :class:`BreakerState`. It
    answers ``record`` itself when nothing changes (no write), and None when the settle needs
    :func:`comptroller.domain.breaker.record_spend` (another status, a record of another version,
    a new relative window, a window over its threshold), which then decides.

    Args:
        record: the stored record (:meth:`BreakerState.to_record`).
        config: the breaker's configuration.
        cost_mc: the settled cost, millicents (>= 0).
        now: the settle time (aware UTC).

    Raises:
        ValueError: on a naive ``now``.
    """
    counters = closed_counters(record)
    if counters is None or type(cost_mc) is not int or cost_mc < 0:
        return None
    counted = count_closed(counters, config, cost_mc, epoch_seconds(now))
    if counted is None or counted is counters:
        return None if counted is None else record
    return counted_record(record, counted)


ClosedCounters = tuple[int | None, int, int | None, int | None, int, int | None, int]
"""A closed breaker's counters: window index and spend, last over window, relative window index and spend, last
over relative window, version (:func:`closed_counters`)."""

def closed_counters(record: Mapping[str, JsonScalar]) -> ClosedCounters | None:
    """The counters of a closed breaker's record of the current shape, well typed; else None (``record_spend``
    decides)."""
    if record.get("status") != "closed" or len(record) != len(_RECORD_KEYS) or not _RECORD_KEYS.issuperset(record):
        return None
    index, spend, last_over = record["window_index"], record["window_spend_mc"], record["last_over_index"]
    rel_index, rel_spend, rel_last_over = (record["rel_window_index"], record["rel_window_spend_mc"],
                                           record["rel_last_over_index"])
    version = record["version"]
    if (type(spend) is not int or type(rel_spend) is not int or type(version) is not int
            or not (_opt_int(index) and _opt_int(last_over) and _opt_int(rel_index) and _opt_int(rel_last_over))):
        return None
    return index, spend, last_over, rel_index, rel_spend, rel_last_over, version  # type: ignore[return-value]


def count_closed(counters: ClosedCounters, config: BreakerConfig, cost_mc: int, now_s: int) -> ClosedCounters | None:
    """The common settle of a closed breaker, on its counters (:func:`count_closed_record` without the record).

    Args:
        counters: the breaker's counters (:func:`closed_counters`).
        config: its configuration.
        cost_mc: the settled cost, millicents (an int >= 0: the caller checks).
        now_s: the settle time, whole seconds since the epoch (:func:`.windows.epoch_seconds`).

    Returns:
        ``counters`` itself when nothing changes; the counters after the settle (one version up,
        :func:`counted_record`); None when ``record_spend`` must decide.
    """
    old_index, old_spend, last_over, rel_index, rel_spend, rel_last_over, version = counters
    index = now_s // config.window_s
    if old_index is None or index > old_index:
        window, spend = index, cost_mc
    else:
        window, spend = old_index, old_spend + cost_mc
    changed = window != old_index or spend != old_spend
    if changed and spend > config.threshold_mc and last_over != window:
        return None  # an over window: a streak to count, maybe a trip
    if config.relative_k is not None:
        if rel_index is None or now_s // config.relative_window_s > rel_index:
            return None  # no relative window yet, or a new one: the baseline folds
        if rel_last_over != rel_index and rel_spend + cost_mc > config.relative_floor_mc:
            return None  # the relative window may be over: judged against a baseline
        rel_spend += cost_mc
    elif not changed:
        return counters
    return window, spend, last_over, rel_index, rel_spend, rel_last_over, version + 1


COUNTED_FIELDS = ("rel_window_spend_mc", "version", "window_index", "window_spend_mc")
"""The record fields :func:`counted_record` moves, sorted (as they appear in the record's JSON text)."""


def counted_record(record: Mapping[str, JsonScalar], counted: ClosedCounters,
                   parts: tuple[str, ...] | None = None) -> dict[str, JsonScalar]:
    """``record`` with the counters :func:`count_closed` gave it (window, its spend, relative spend, version).

    Args:
        record: the record counted.
        counted: its counters after the settle.
        parts: ``record``'s JSON text cut around :data:`COUNTED_FIELDS` (:func:`.state_rows.text_parts`), if
            known: the record is then an :class:`~.state_rows.EncodedRecord` carrying its text, built
            without the encoder.
    """
    window, spend, _, _, rel_spend, _, version = counted
    fields: dict[str, JsonScalar]
    if (parts is not None and window is not None and JSON_INT_MIN <= spend <= JSON_INT_MAX
            and JSON_INT_MIN <= rel_spend <= JSON_INT_MAX and JSON_INT_MIN <= version <= JSON_INT_MAX
            and JSON_INT_MIN <= window <= JSON_INT_MAX):
        p0, p1, p2, p3, p4 = parts
        fields = EncodedRecord(record, f"{p0}{rel_spend}{p1}{version}{p2}{window}{p3}{spend}{p4}")
    else:
        fields = dict(record)
    fields["window_index"], fields["window_spend_mc"], fields["rel_window_spend_mc"] = window, spend, rel_spend
    fields["version"] = version
    return fields


def _opt_int(value: JsonScalar) -> bool:
    return value is None or type(value) is int
