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

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from comptroller.domain.breaker_config import (
    DEFAULT_RELATIVE_FLOOR_MC,
    DEFAULT_RELATIVE_K,
    DEFAULT_THRESHOLD_MC,
    BreakerConfig,
)
from comptroller.domain.breaker_state import BreakerState, BreakerStatus, BreakerTransition, evolve
from comptroller.domain.breaker_verdicts import busy_verdict, open_verdict
from comptroller.domain.defenses._checks import require_aware, require_text
from comptroller.domain.defenses.baseline import SpendBaseline
from comptroller.domain.defenses.verdict import JsonScalar, Verdict
from comptroller.domain.defenses.windows import window_bounds, window_index
from comptroller.domain.ledger import Event

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
        state = evolve(state, status=BreakerStatus.HALF_OPEN, **_NO_PROBE)
        events.append(_event(state, BreakerTransition.HALF_OPENED, now, config, {}))
    if (state.status is BreakerStatus.HALF_OPEN and state.probe_expires_at is not None
            and now >= state.probe_expires_at):
        state = evolve(state, probe_id=None, probe_expires_at=None)
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
        return replace(step, verdict=open_verdict(current, config, now))
    if current.probe_id == call_id:
        return replace(step, probe=True)
    if current.probe_id is not None:
        return replace(step, verdict=busy_verdict(current, config, now))
    leased = evolve(
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
    events: tuple[Event, ...] = ()
    current = state
    if state.status is not BreakerStatus.CLOSED:  # time alone changes nothing while closed (see advance)
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
            current = evolve(current, **counted) if counted else current
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
    current = evolve(current, probe_id=None, probe_expires_at=None)
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
    if window is None or state.rel_last_over_index == window or spend <= config.relative_floor_mc:
        return state, ()  # decided before the baseline is needed
    base = _relative_base_mc(state, config, now, fallback)
    if base is None or spend <= config.relative_k * base:
        return state, ()
    streak = state.rel_over_streak + 1 if state.rel_last_over_index == window - 1 else 1
    state = evolve(state, rel_over_streak=streak, rel_last_over_index=window)
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
    state = evolve(state, **changes)
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
    opened = evolve(state, status=BreakerStatus.OPEN, trips=trips, opened_at=now, open_until=until,
                     tripped_by=tripped_by, **_NO_WINDOW, **_NO_PROBE)
    detail = {**seen, "trips": trips, "cooldown_s": cooldown, "open_until": until.isoformat()}
    return opened, (_event(opened, transition, now, config, detail),)


def _close(state: BreakerState, config: BreakerConfig, now: datetime) -> tuple[BreakerState, Event]:
    detail: dict[str, JsonScalar] = {"probe_spend_mc": state.probe_spend_mc, "trips_before": state.trips}
    closed = evolve(state, status=BreakerStatus.CLOSED, trips=0, opened_at=None, open_until=None,
                     **{**_NO_WINDOW, **_NO_PROBE, "window_index": window_index(now, config.window_s)})
    return closed, _event(closed, BreakerTransition.CLOSED, now, config, detail)



def _event(state: BreakerState, transition: BreakerTransition, now: datetime, config: BreakerConfig,
           detail: Mapping[str, JsonScalar]) -> Event:
    full: dict[str, JsonScalar] = {"threshold_mc": config.threshold_mc, "window_s": config.window_s,
                                   "trip_windows": config.trip_windows, **detail}
    return Event(ts=now, kind="breaker", code=str(transition), level=str(state.level), scope=state.scope,
                 detail=full)

