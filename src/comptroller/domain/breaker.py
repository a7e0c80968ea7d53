"""Spend-rate circuit breakers, per agent and per conversation (DESIGN.md rule 5).

Source: KinthAI, "Your AI Agent Needs a Wallet" (a window whose spend exceeds the
threshold counts; three consecutive such windows open the breaker; open refuses
and notifies the owner; the cooldown doubles on each trip, at most five minutes;
half-open lets a probe through; a normal probe closes it and resets the cooldown).
The state names and the listener-style events follow pybreaker, without its wall
clock: every function here takes ``now`` and returns a new state, so the whole
machine runs in virtual time.

Transitions (``n`` counts trips since the breaker last closed)::

    closed    --settle makes the 3rd consecutive window over-->      open (trip n+1)
    open      --now >= open_until (cooldown elapsed)-->              half_open
    half_open --probe window spend > threshold-->                    open (trip n+1, cooldown doubled)
    half_open --probe window complete, spend <= threshold, no probe out--> closed (n := 0)
    any       --admin reset-->                                       closed (n := 0)

cooldown of trip n = min(cooldown_s_start * 2 ** (n - 1), cooldown_s_max): 5, 10, 20, 40,
80, 160, 300, 300... seconds with the defaults.

Relative trips. Beside the fixed threshold, a breaker can judge a scope against its own
history (``relative_k``, on by default): settled spend is also counted in longer windows
(``relative_window_s``, one hour) whose trailing baseline is kept in the state
(:class:`~comptroller.domain.defenses.baseline.SpendBaseline`, a moving average with a
one-day half-life). An over window adds at most k times the baseline to it, so a runaway does not raise the
baseline it is judged by. A relative window is *over* when its spend exceeds both
``relative_k`` times the baseline and the absolute floor ``relative_floor_mc``;
``trip_windows`` consecutive over windows open the breaker, until at least the end of
the current relative window. A scope observed for less than ``baseline_age_s_min`` has
no baseline of its own yet and is judged against its namespace's (the caller passes
it); if the namespace is young too, only the fixed threshold applies. The defaults:
k = 10 (an agent's hourly spend varies a few-fold between day and night; ten times its
usual rate for three hours in a row is not normal use), a floor of $1.00 an hour
(below it a rate is not worth stopping anyone for: $720 a month at most, and budgets
bound it), one-hour windows (a burst of minutes, a daily batch job of under three hours,
never trips). So an agent that normally spends $0.001 a minute is stopped within three
hours at 100 times that, and never at twice it.

Windows. While closed, settled spend is counted in windows aligned to the epoch
(:func:`~comptroller.domain.defenses.windows.window_index`), so every process
counts the same ones. A window is *over* the moment its spend exceeds
``threshold_mc`` (strictly more); it joins the streak if the previous aligned
window was over too, else starts a new streak of 1. A window with no spend is
normal and breaks the streak. The breaker therefore opens inside the third over
window, as soon as that window crosses the threshold, not at its end.

Half-open. The first call after the cooldown takes the *probe lease*
(``probe_id``, ``probe_expires_at``); while the lease is out every other call is
refused, so exactly one probe runs at a time. The probe window starts when that
first probe is admitted and lasts ``window_s``; spend settled in it is counted
(spend settled while open, or half-open before the first probe, comes from calls
admitted before the trip and is not counted). Settling or releasing the probe
returns the lease and the next call may probe. Spend above the threshold in the
probe window re-opens the breaker at once; a completed probe window at or below
the threshold, with no probe out, closes it and resets the cooldown. A probe that
crashes loses its lease at ``probe_expires_at``.

Concurrency. These functions are pure; a store makes them atomic. Each state has
a ``version`` that every change increments: read a state, apply a function, and
write the result back only if the stored version is still the one read
(compare-and-set), else re-read and re-apply. Two processes racing for the probe
lease both compute a lease from the same version; only one write succeeds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import repeat
from operator import attrgetter
from typing import Any

from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses._checks import (
    parse_level,
    require_aware,
    require_int,
    require_seconds,
    require_text,
)
from comptroller.domain.defenses.baseline import SpendBaseline
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.defenses.windows import seconds_until, window_bounds, window_index
from comptroller.domain.ledger import Event
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import Level

__all__ = [
    "DEFAULT_RELATIVE_FLOOR_MC",
    "DEFAULT_RELATIVE_K",
    "DEFAULT_THRESHOLD_MC",
    "BreakerConfig",
    "BreakerState",
    "BreakerStatus",
    "BreakerStep",
    "BreakerTransition",
    "admit",
    "advance",
    "record_spend",
    "release_probe",
    "reset",
]

DEFAULT_THRESHOLD_MC = 50_000
"""$0.50 per 60 s window ($30 an hour sustained): our starting point, not a sourced number."""
DEFAULT_RELATIVE_K = 10
"""A relative window is over above 10x the scope's own baseline (see the module docstring)."""
DEFAULT_RELATIVE_FLOOR_MC = 100_000
"""...and above $1.00 per relative window (one hour): the absolute floor."""
_DAY_S = 86_400


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
class BreakerConfig:
    """How one breaker judges spend. Defaults from KinthAI, except the threshold (ours).

    Attributes:
        threshold_mc: a window spending more than this is over, millicents (>= 1).
        window_s: the window length, whole seconds (1..86,400; default 60).
        trip_windows: consecutive over windows that open the breaker (1..1,000; default 3).
        cooldown_s_start: the cooldown of the first trip, seconds (default 5).
        cooldown_s_max: the cooldown never exceeds this, seconds (>= start; default 300).
        probe_lease_s: how long a probe holds the half-open lease before another
            call may probe (a crashed probe gives it up by itself), seconds (default 60).
        relative_k: a relative window spending more than this many times the baseline is
            over (1..1,000,000; default 10), or None to judge by the fixed threshold only.
        relative_floor_mc: ...and more than this, millicents (default 100,000: $1.00).
        relative_window_s: the relative window, whole seconds (60..86,400; default 3,600).
        baseline_half_life_s: the baseline's half-life, seconds (default 86,400: one day).
        baseline_age_s_min: a scope observed for less than this uses its namespace's
            baseline, seconds (default 86,400).

    Raises:
        DefenseConfigError: on a threshold below 1 mc, a window below 1 s, a
            non-positive cooldown or lease, or ``cooldown_s_max < cooldown_s_start``.
    """

    threshold_mc: int = DEFAULT_THRESHOLD_MC
    window_s: int = 60
    trip_windows: int = 3
    cooldown_s_start: float = 5.0
    cooldown_s_max: float = 300.0
    probe_lease_s: float = 60.0
    relative_k: int | None = DEFAULT_RELATIVE_K
    relative_floor_mc: int = DEFAULT_RELATIVE_FLOOR_MC
    relative_window_s: int = 3_600
    baseline_half_life_s: float = 86_400.0
    baseline_age_s_min: float = 86_400.0

    def __post_init__(self) -> None:
        owner = "breaker"
        if self.relative_k is not None:
            require_int(owner, "relative_k", self.relative_k, low=1, high=1_000_000)
        require_int(owner, "relative_floor_mc", self.relative_floor_mc, low=0, unit=" mc")
        require_int(owner, "relative_window_s", self.relative_window_s, low=60, high=_DAY_S, unit=" s")
        for name in ("baseline_half_life_s", "baseline_age_s_min"):
            object.__setattr__(self, name, require_seconds(owner, name, getattr(self, name), high=30 * _DAY_S))
        require_int(owner, "threshold_mc", self.threshold_mc, low=1, unit=" mc")
        require_int(owner, "window_s", self.window_s, low=1, high=_DAY_S, unit=" s")
        require_int(owner, "trip_windows", self.trip_windows, low=1, high=1_000)
        start = require_seconds(owner, "cooldown_s_start", self.cooldown_s_start, high=_DAY_S)
        top = require_seconds(owner, "cooldown_s_max", self.cooldown_s_max, high=_DAY_S)
        if top < start:
            raise DefenseConfigError(
                f"breaker.cooldown_s_max ({top:g} s) is below breaker.cooldown_s_start ({start:g} s); "
                "set cooldown_s_max >= cooldown_s_start"
            )
        lease = require_seconds(owner, "probe_lease_s", self.probe_lease_s, high=3_600.0)
        object.__setattr__(self, "cooldown_s_start", start)
        object.__setattr__(self, "cooldown_s_max", top)
        object.__setattr__(self, "probe_lease_s", lease)

    def cooldown_s(self, trip: int) -> float:
        """The cooldown of trip number ``trip`` (>= 1): ``min(start * 2 ** (trip - 1), max)`` seconds."""
        if trip < 1:
            raise ValueError(f"trip numbers start at 1, got {trip!r}")
        return min(self.cooldown_s_start * 2.0 ** min(trip - 1, 64), self.cooldown_s_max)


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
        return {
            "level": str(self.level), "scope": self.scope, "status": str(self.status),
            "version": self.version, "window_index": self.window_index,
            "window_spend_mc": self.window_spend_mc, "over_streak": self.over_streak,
            "last_over_index": self.last_over_index, "trips": self.trips,
            "opened_at": rec.iso(self.opened_at), "open_until": rec.iso(self.open_until),
            "probe_window_start": rec.iso(self.probe_window_start), "probe_spend_mc": self.probe_spend_mc,
            "probe_id": self.probe_id, "probe_expires_at": rec.iso(self.probe_expires_at),
            **self.rel.to_record("rel_"), "rel_over_streak": self.rel_over_streak,
            "rel_last_over_index": self.rel_last_over_index, "tripped_by": self.tripped_by,
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


@dataclass(frozen=True, slots=True)
class BreakerStep:
    """The result of one breaker function.

    Attributes:
        state: the new state; write it back iff ``state.version`` differs from the one read.
        events: ``breaker`` events to append (the owner is notified through them), oldest first.
        verdict: for :func:`admit`: why the call is refused, or None to admit.
        probe: for :func:`admit`: True if the admitted call holds the half-open probe lease.
    """

    state: BreakerState
    events: tuple[Event, ...] = ()
    verdict: Verdict | None = None
    probe: bool = False

    @property
    def admitted(self) -> bool:
        """True unless the breaker refused the call."""
        return self.verdict is None


def advance(state: BreakerState, config: BreakerConfig, now: datetime) -> BreakerStep:
    """Apply the transitions that time alone causes, up to ``now``.

    Open becomes half-open once ``now >= open_until``; in half-open an expired probe
    lease is freed, and a completed probe window at or below the threshold with no
    probe out closes the breaker. :func:`admit`, :func:`record_spend` and
    :func:`release_probe` call this first.

    Raises:
        ValueError: on a naive ``now``.
    """
    require_aware("now", now)
    events: list[Event] = []
    if state.status is BreakerStatus.OPEN and state.open_until is not None and now >= state.open_until:
        state = _evolve(state, status=BreakerStatus.HALF_OPEN, **_NO_PROBE)
        events.append(_event(state, BreakerTransition.HALF_OPENED, now, config, {}))
    if (state.status is BreakerStatus.HALF_OPEN and state.probe_expires_at is not None
            and now >= state.probe_expires_at):
        state = _evolve(state, probe_id=None, probe_expires_at=None)
    if _probe_window_passed(state, config, now):
        state, closed = _close(state, config, now)
        events.append(closed)
    return BreakerStep(state, tuple(events))


def admit(state: BreakerState, config: BreakerConfig, call_id: str, now: datetime) -> BreakerStep:
    """Decide whether a call may start: closed admits, open refuses, half-open admits one probe.

    Args:
        state: the breaker as read.
        config: its configuration.
        call_id: the caller's id for this call (the reservation's idempotency key);
            admitting the lease holder again is idempotent.
        now: the admission time (aware UTC).

    Returns:
        A step whose ``verdict`` is a ``circuit_open`` refusal (detector ``open`` or
        ``probe_in_flight``, with ``retry_after_s``), or None with ``probe`` True when
        the call took the lease.

    Raises:
        ValueError: on a naive ``now`` or an empty ``call_id``.
    """
    require_text("breaker", "call_id", call_id)
    step = advance(state, config, now)
    current = step.state
    if current.status is BreakerStatus.CLOSED:
        return step
    if current.status is BreakerStatus.OPEN:
        return replace(step, verdict=_open_verdict(current, config, now))
    if current.probe_id == call_id:
        return replace(step, probe=True)
    if current.probe_id is not None:
        return replace(step, verdict=_busy_verdict(current, config, now))
    leased = _evolve(
        current, probe_id=call_id, probe_expires_at=now + timedelta(seconds=config.probe_lease_s),
        probe_window_start=current.probe_window_start or now,
    )
    return BreakerStep(leased, step.events, probe=True)


def record_spend(state: BreakerState, config: BreakerConfig, cost_mc: int, now: datetime, *,
                 call_id: str | None = None, fallback: SpendBaseline | None = None) -> BreakerStep:
    """Count a settled cost; may open, re-open or close the breaker.

    Call it once per settled call (inside the settle's transaction, so a repeated
    settle, which the ledger answers ``already_settled``, is not counted twice).

    Args:
        state: the breaker as read.
        config: its configuration.
        cost_mc: the call's settled cost, millicents (>= 0).
        now: the settle time (aware UTC). A time inside an earlier window than the
            one being counted is counted in the current window.
        call_id: the settled call's id; settling the probe returns the lease.
        fallback: the namespace's baseline, judged against while this scope's own is young.

    Raises:
        ValueError: on a negative or non-integer cost, or a naive ``now``.
    """
    if type(cost_mc) is not int or cost_mc < 0:
        raise ValueError(f"cost_mc must be a non-negative integer of millicents, got {cost_mc!r}")
    step = advance(state, config, now)
    current, events = step.state, step.events
    if current.status is BreakerStatus.CLOSED:
        counted = _count_closed(current, config, cost_mc, now)
        if isinstance(counted, tuple):  # opened
            current, more = counted
        else:  # one new state for the window and the relative window together
            if config.relative_k is not None:
                own = current.rel.observed_s(now) >= config.baseline_age_s_min
                cap = config.relative_k * current.rel.baseline_mc() if own else None
                counted["rel"] = current.rel.add(cost_mc, now, window_s=config.relative_window_s,
                                                 half_life_s=config.baseline_half_life_s, fold_cap_mc=cap)
            current = _evolve(current, **counted) if counted else current
            current, more = _count_relative(current, config, now, fallback)
    elif current.status is BreakerStatus.HALF_OPEN:
        current, more = _count_half_open(current, config, cost_mc, now, call_id)
    else:
        more = ()
    return BreakerStep(current, events + more)


def release_probe(state: BreakerState, config: BreakerConfig, call_id: str, now: datetime) -> BreakerStep:
    """Return the probe lease of a call that failed or was released (it cost nothing).

    Args:
        state: the breaker as read.
        config: its configuration.
        call_id: the released call's id; a call that is not the lease holder
            changes nothing (besides :func:`advance`).
        now: the release time (aware UTC).
    """
    step = advance(state, config, now)
    current = step.state
    if current.status is not BreakerStatus.HALF_OPEN or current.probe_id != call_id:
        return step
    current = _evolve(current, probe_id=None, probe_expires_at=None)
    if _probe_window_passed(current, config, now):
        current, closed = _close(current, config, now)
        return BreakerStep(current, (*step.events, closed))
    return BreakerStep(current, step.events)


def reset(state: BreakerState, now: datetime, *, by: str) -> BreakerStep:
    """An admin's manual reset: closed, no streak, cooldown back to the start.

    Args:
        state: the breaker as read.
        now: when (aware UTC).
        by: who reset it (recorded in the event).

    Raises:
        ValueError: on a naive ``now`` or an empty ``by``.
    """
    require_aware("now", now)
    require_text("breaker reset", "by", by)
    fresh = BreakerState(level=state.level, scope=state.scope, version=state.version + 1)
    detail: dict[str, JsonScalar] = {"by": by, "from_status": str(state.status), "trips": state.trips}
    event = Event(ts=now, kind="breaker", code=str(BreakerTransition.RESET), level=str(state.level),
                  scope=state.scope, detail=detail)
    return BreakerStep(fresh, (event,))


def _count_closed(state: BreakerState, config: BreakerConfig, cost_mc: int,
                  now: datetime) -> dict[str, Any] | tuple[BreakerState, tuple[Event, ...]]:
    """The changes counting ``cost_mc`` in the fixed window makes (``{}``: none), or the opened state and event."""
    index = window_index(now, config.window_s)
    if state.window_index is None or index > state.window_index:
        window, spend = index, cost_mc
    else:
        window, spend = state.window_index, state.window_spend_mc + cost_mc
    if (window, spend) == (state.window_index, state.window_spend_mc):
        return {}
    if spend <= config.threshold_mc or state.last_over_index == window:
        return {"window_index": window, "window_spend_mc": spend}
    streak = state.over_streak + 1 if state.last_over_index == window - 1 else 1
    if streak >= config.trip_windows:
        return _open(state, config, now, BreakerTransition.OPENED, {"window_spend_mc": spend,
                                                                    "over_windows": streak})
    return {"window_index": window, "window_spend_mc": spend, "over_streak": streak, "last_over_index": window}


def _relative_base_mc(state: BreakerState, config: BreakerConfig, now: datetime,
                      fallback: SpendBaseline | None) -> float | None:
    """The baseline to judge by: the scope's own once old enough, else the namespace's if it is; else None."""
    if state.rel.observed_s(now) >= config.baseline_age_s_min:
        return state.rel.baseline_mc()
    if fallback is not None and fallback.observed_s(now) >= config.baseline_age_s_min:
        return fallback.baseline_mc()
    return None


def _count_relative(state: BreakerState, config: BreakerConfig, now: datetime,
                    fallback: SpendBaseline | None) -> tuple[BreakerState, tuple[Event, ...]]:
    if config.relative_k is None:
        return state, ()
    window, spend = state.rel.window_index, state.rel.window_spend_mc
    base = _relative_base_mc(state, config, now, fallback)
    if (base is None or window is None or state.rel_last_over_index == window
            or spend <= config.relative_floor_mc or spend <= config.relative_k * base):
        return state, ()
    streak = state.rel_over_streak + 1 if state.rel_last_over_index == window - 1 else 1
    state = _evolve(state, rel_over_streak=streak, rel_last_over_index=window)
    if streak < config.trip_windows:
        return state, ()
    window_end = window_bounds(window, config.relative_window_s)[1]
    return _open(state, config, now, BreakerTransition.OPENED,
                 {"relative_window_spend_mc": spend, "baseline_mc": round(base, 3), "relative_k": config.relative_k,
                  "relative_floor_mc": config.relative_floor_mc, "over_windows": streak},
                 until_at_least=window_end, tripped_by="relative")


def _count_half_open(state: BreakerState, config: BreakerConfig, cost_mc: int, now: datetime,
                     call_id: str | None) -> tuple[BreakerState, tuple[Event, ...]]:
    if state.probe_window_start is None:
        return state, ()
    changes: dict[str, Any] = {"probe_spend_mc": state.probe_spend_mc + cost_mc}
    if call_id is not None and call_id == state.probe_id:
        changes.update(probe_id=None, probe_expires_at=None)
    state = _evolve(state, **changes)
    if state.probe_spend_mc > config.threshold_mc:
        return _open(state, config, now, BreakerTransition.REOPENED,
                     {"probe_spend_mc": state.probe_spend_mc})
    if _probe_window_passed(state, config, now):
        state, closed = _close(state, config, now)
        return state, (closed,)
    return state, ()


def _probe_window_passed(state: BreakerState, config: BreakerConfig, now: datetime) -> bool:
    """Half-open, no probe out, and a full window since the first probe, spent at or below the threshold."""
    return (state.status is BreakerStatus.HALF_OPEN and state.probe_id is None
            and state.probe_window_start is not None
            and now >= state.probe_window_start + timedelta(seconds=config.window_s)
            and state.probe_spend_mc <= config.threshold_mc)


_NO_PROBE: dict[str, Any] = {"probe_window_start": None, "probe_spend_mc": 0, "probe_id": None,
                             "probe_expires_at": None}
_NO_WINDOW: dict[str, Any] = {"window_index": None, "window_spend_mc": 0, "over_streak": 0,
                              "last_over_index": None}


def _open(state: BreakerState, config: BreakerConfig, now: datetime, transition: BreakerTransition,
          seen: dict[str, JsonScalar], *, until_at_least: datetime | None = None,
          tripped_by: str = "threshold") -> tuple[BreakerState, tuple[Event, ...]]:
    trips = state.trips + 1
    cooldown = config.cooldown_s(trips)
    until = now + timedelta(seconds=cooldown)
    if until_at_least is not None and until < until_at_least:
        until = until_at_least
    opened = _evolve(state, status=BreakerStatus.OPEN, trips=trips, opened_at=now, open_until=until,
                     tripped_by=tripped_by, **_NO_WINDOW, **_NO_PROBE)
    detail = {**seen, "trips": trips, "cooldown_s": cooldown, "open_until": until.isoformat()}
    return opened, (_event(opened, transition, now, config, detail),)


def _close(state: BreakerState, config: BreakerConfig, now: datetime) -> tuple[BreakerState, Event]:
    detail: dict[str, JsonScalar] = {"probe_spend_mc": state.probe_spend_mc, "trips_before": state.trips}
    closed = _evolve(state, status=BreakerStatus.CLOSED, trips=0, opened_at=None, open_until=None,
                     **{**_NO_WINDOW, **_NO_PROBE, "window_index": window_index(now, config.window_s)})
    return closed, _event(closed, BreakerTransition.CLOSED, now, config, detail)


_FIELDS = tuple(f.name for f in fields(BreakerState))
_FIELD_INDEX = {name: i for i, name in enumerate(_FIELDS)}
_VALUES = attrgetter(*_FIELDS)  # every field's value, in one C call
_SLOTS = tuple(getattr(BreakerState, name) for name in _FIELDS)  # the slots' member descriptors
_SET_SLOT = type(_SLOTS[0]).__set__  # sets a slot directly (a frozen dataclass refuses setattr)


def _evolve(state: BreakerState, **changes: Any) -> BreakerState:
    """The next version of a valid state with ``changes`` (internal transitions: not validated again)."""
    values = list(_VALUES(state))
    for name, value in changes.items():
        values[_FIELD_INDEX[name]] = value
    values[_FIELD_INDEX["version"]] = state.version + 1
    evolved = object.__new__(BreakerState)
    deque(map(_SET_SLOT, _SLOTS, repeat(evolved), values), maxlen=0)  # the slots, set in C
    return evolved


def _event(state: BreakerState, transition: BreakerTransition, now: datetime, config: BreakerConfig,
           detail: Mapping[str, JsonScalar]) -> Event:
    full: dict[str, JsonScalar] = {"threshold_mc": config.threshold_mc, "window_s": config.window_s,
                                   "trip_windows": config.trip_windows, **detail}
    return Event(ts=now, kind="breaker", code=str(transition), level=str(state.level), scope=state.scope,
                 detail=full)


def _evidence(state: BreakerState, config: BreakerConfig) -> dict[str, JsonScalar]:
    return {
        "status": str(state.status), "trips": state.trips, "tripped_by": state.tripped_by,
        "threshold_mc": config.threshold_mc,
        "window_s": config.window_s, "trip_windows": config.trip_windows,
        "cooldown_s": config.cooldown_s(state.trips) if state.trips else None,
        "open_until": rec.iso(state.open_until), "probe_id": state.probe_id,
        "probe_expires_at": rec.iso(state.probe_expires_at),
    }


def _open_verdict(state: BreakerState, config: BreakerConfig, now: datetime) -> Verdict:
    assert state.open_until is not None  # open always has an end; see _open
    wait = seconds_until(state.open_until, now)
    cooldown = config.cooldown_s(state.trips)
    if state.tripped_by == "relative":
        return Verdict(
            code=Code.CIRCUIT_OPEN, rule=Rule.BREAKER, detector="relative_rate", level=state.level,
            scope=state.scope, retry_after_s=wait, evidence=_evidence(state, config),
            message=(
                f"circuit_open: the spend-rate breaker of {state.level} {state.scope!r} is open: for "
                f"{config.trip_windows} windows of {config.relative_window_s} s in a row it spent more than "
                f"{config.relative_k} times its usual rate and more than {format_usd(config.relative_floor_mc)} "
                f"(trip {state.trips}). One probe call may go in {wait:.0f} s; find what changed, or have an "
                "admin reset the breaker (`comptroller breaker reset`)."
            ),
        )
    return Verdict(
        code=Code.CIRCUIT_OPEN, rule=Rule.BREAKER, detector="open", level=state.level, scope=state.scope,
        retry_after_s=wait, evidence=_evidence(state, config),
        message=(
            f"circuit_open: the spend-rate breaker of {state.level} {state.scope!r} is open: spend ran "
            f"above {format_usd(config.threshold_mc)} per {config.window_s} s window (trip {state.trips}, "
            f"cooldown {cooldown:g} s). One probe call may go in {wait:.1f} s; wait, or have an admin "
            "reset the breaker."
        ),
    )


def _busy_verdict(state: BreakerState, config: BreakerConfig, now: datetime) -> Verdict:
    assert state.probe_expires_at is not None  # a lease always has an expiry; see admit
    wait = seconds_until(state.probe_expires_at, now)
    return Verdict(
        code=Code.CIRCUIT_OPEN, rule=Rule.BREAKER, detector="probe_in_flight", level=state.level,
        scope=state.scope, retry_after_s=wait, evidence=_evidence(state, config),
        message=(
            f"circuit_open: the spend-rate breaker of {state.level} {state.scope!r} is half-open and its "
            f"one probe call ({state.probe_id!r}) is in flight; other calls wait until it settles "
            f"(at most {wait:.1f} s, the probe lease). Retry then."
        ),
    )
