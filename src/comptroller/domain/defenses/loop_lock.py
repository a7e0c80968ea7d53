"""The lock-out of a scope where a loop was detected: a breaker-like state that does not forget.

Source: "Multi-Agent Mesh Economics" (a $47,000 bill from a retry loop that ran for 11
days: a detector whose lookback expires lets such a loop through a few calls every
hour); KinthAI's breaker states (closed, open with a doubling cooldown, half-open).

Transitions (``n`` counts trips; it starts over after ``memory_s`` without a trip)::

    closed    --a detector fires-->                                open (trip n+1)
    open      --now >= open_until-->                               half_open
    half_open --the probe is the locked loop again-->              open (trip n+1, cooldown doubled)
    half_open --the probe is anything else-->                      closed
    any       --admin reset (``comptroller loop reset``)-->         closed, history cleared

cooldown of trip n = min(cooldown_s_start * 2 ** (n - 1), cooldown_s_max).

The half-open probe is judged when it is admitted, by its request: the lock keeps
what the loop looked like (the agent and its request's fingerprint and sketch, and
for a ``repeated_template`` trip its template; or the two agents of a ping-pong), so
a loop's own retries are refused at every probe and never paid, while any other
call re-opens the scope at once. Pure: ``now`` is an argument; the state lives
inside the loop history's row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from operator import attrgetter

from comptroller.domain.defenses.verdict import JsonScalar

__all__ = ["UNTRIPPED", "LockStatus", "LoopLock", "LoopTransition"]


class LockStatus(StrEnum):
    """Where a loop lock is (the breaker's vocabulary)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class LoopTransition(StrEnum):
    """The ``code`` of a ``loop`` event."""

    OPENED = "opened"
    REOPENED = "reopened"
    CLOSED = "closed"
    RESET = "reset"


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(record: Mapping[str, JsonScalar], key: str) -> datetime | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"state record field {key!r} must be epoch seconds or null, got {value!r}")
    return datetime.fromtimestamp(float(value), UTC)


def _opt_str(record: Mapping[str, JsonScalar], key: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"state record field {key!r} must be a string or null, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class LoopLock:
    """The lock of one loop scope.

    Attributes:
        trips: trips counted (sets the cooldown; 0 when never tripped or forgotten).
        detector: the detector of the last trip (``same_request``, ``near_duplicate``,
            ``ab_alternation``), None while never tripped.
        agent: the agent whose loop tripped it (for a ping-pong: one of the two).
        other_agent: the other agent of a ping-pong, else None.
        fingerprint, sketch: the looping request's fingerprint and sketch (hex), else None.
        template: the looping template's key, for a ``repeated_template`` trip, else None.
        opened_at, open_until: when the current lock opened and its cooldown ends (None: closed).
        last_trip_at: when it last tripped (trips are forgotten ``memory_s`` after it).
    """

    trips: int = 0
    detector: str | None = None
    agent: str | None = None
    other_agent: str | None = None
    fingerprint: str | None = None
    sketch: str | None = None
    template: str | None = None
    opened_at: datetime | None = None
    open_until: datetime | None = None
    last_trip_at: datetime | None = None

    def status(self, now: datetime) -> LockStatus:
        """Closed, open (cooldown running) or half-open (the next call is the probe)."""
        if self.open_until is None:
            return LockStatus.CLOSED
        return LockStatus.OPEN if now < self.open_until else LockStatus.HALF_OPEN

    def trip(self, *, detector: str, agent: str, other_agent: str | None, fingerprint: str | None,
             sketch: str | None, now: datetime, cooldown_s_start: float, cooldown_s_max: float,
             memory_s: float, template: str | None = None) -> LoopLock:
        """Open (or re-open) the lock on this loop, its cooldown doubled from the last trip."""
        remembered = self.last_trip_at is not None and now - self.last_trip_at < timedelta(seconds=memory_s)
        trips = (self.trips if remembered else 0) + 1
        cooldown = min(cooldown_s_start * 2.0 ** min(trips - 1, 64), cooldown_s_max)
        return LoopLock(trips=trips, detector=detector, agent=agent, other_agent=other_agent,
                        fingerprint=fingerprint, sketch=sketch, template=template, opened_at=now,
                        open_until=now + timedelta(seconds=cooldown), last_trip_at=now)

    def close(self) -> LoopLock:
        """Closed; the trip count stays (a loop that comes back soon gets a longer cooldown)."""
        return replace(self, opened_at=None, open_until=None)

    def to_record(self) -> dict[str, JsonScalar]:
        """Flat fields (``lock_*``) for the loop history's record; times as UTC epoch seconds."""
        if self is UNTRIPPED or (self.trips == 0 and _OPTIONAL_FIELDS(self) == _UNSET):
            return dict(_NEVER_TRIPPED)  # most scopes' lock: a copy of this constant
        return self._fields()

    def _fields(self) -> dict[str, JsonScalar]:
        return {"lock_trips": self.trips, "lock_detector": self.detector, "lock_agent": self.agent,
                "lock_other_agent": self.other_agent, "lock_fingerprint": self.fingerprint,
                "lock_sketch": self.sketch, "lock_template": self.template, "lock_opened_at": _ts(self.opened_at),
                "lock_open_until": _ts(self.open_until), "lock_last_trip_at": _ts(self.last_trip_at)}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> LoopLock:
        """Read :meth:`to_record`'s fields (a record without them is a never-tripped lock)."""
        trips = record.get("lock_trips", 0)
        if type(trips) is not int:
            raise ValueError(f"state record field 'lock_trips' must be an integer, got {trips!r}")
        if trips == 0 and all(record.get(key) is None for key in _OPTIONAL_KEYS):
            return UNTRIPPED
        return cls(trips=trips, detector=_opt_str(record, "lock_detector"), agent=_opt_str(record, "lock_agent"),
                   other_agent=_opt_str(record, "lock_other_agent"),
                   fingerprint=_opt_str(record, "lock_fingerprint"), sketch=_opt_str(record, "lock_sketch"),
                   template=_opt_str(record, "lock_template"),
                   opened_at=_dt(record, "lock_opened_at"), open_until=_dt(record, "lock_open_until"),
                   last_trip_at=_dt(record, "lock_last_trip_at"))


_OPTIONAL = ("detector", "agent", "other_agent", "fingerprint", "sketch", "template", "opened_at", "open_until",
             "last_trip_at")
_OPTIONAL_FIELDS, _UNSET = attrgetter(*_OPTIONAL), (None,) * len(_OPTIONAL)
_OPTIONAL_KEYS = tuple(f"lock_{name}" for name in _OPTIONAL)
UNTRIPPED = LoopLock()
"""The lock of a scope that never tripped (or forgot it): shared, as every lock is never changed."""
_NEVER_TRIPPED = UNTRIPPED._fields()
