"""Layer 3: the kill switch, manual or automatic, on the aggregate spend.

Source: "Multi-Agent Mesh Economics" (layer 3: a centralised kill switch on the
total cost aggregate; rate limits alone do not stop sustained, normal-volume
recursive loops). A tripped switch refuses every call in its scope with
``kill_switch`` until an admin resets it; waiting never helps.

It trips three ways (the verdict's ``detector``):

* ``manual``: an admin trips it (any level: a namespace, a tenant, an agent...);
* ``window_spend``: the aggregate settled spend of the scope in one aligned window
  of ``window_s`` exceeds ``window_spend_mc_max``;
* ``budget_fraction``: the scope's budget account has settled more than
  ``budget_pct_max`` percent of its limit (``settled * 100 > pct * limit``,
  integer math).

The automatic triggers are checked at each settle (:func:`record_spend`), so the
call that crosses the line is paid and the next one is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses._checks import parse_level, require_aware, require_int, require_text
from comptroller.domain.defenses._versions import versioner
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.defenses.windows import epoch_seconds, window_index
from comptroller.domain.ledger import Event
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import LEVELS, Level

__all__ = [
    "KillMode",
    "KillSwitchConfig",
    "KillSwitchState",
    "KillSwitchStep",
    "SwitchCounters",
    "check_kill_switch",
    "count_record",
    "count_switch",
    "counted_record",
    "record_spend",
    "reset",
    "switch_counters",
    "trip",
]


class KillMode(StrEnum):
    """Why a kill switch tripped."""

    MANUAL = "manual"
    WINDOW_SPEND = "window_spend"
    BUDGET_FRACTION = "budget_fraction"


@dataclass(frozen=True, slots=True)
class KillSwitchConfig:
    """The automatic triggers of one scope's kill switch (both off by default: manual only).

    Attributes:
        window_s: the aggregate window, whole seconds (1..86,400; default 3,600).
        window_spend_mc_max: trip when one window's settled spend exceeds this, mc (>= 1), or None.
        budget_pct_max: trip when the budget account's settled spend exceeds this
            percentage of its limit (1..100), or None.

    Raises:
        DefenseConfigError: on a window below 1 s or a threshold out of range.
    """

    window_s: int = 3_600
    window_spend_mc_max: int | None = None
    budget_pct_max: int | None = None

    def __post_init__(self) -> None:
        owner = "kill_switch"
        require_int(owner, "window_s", self.window_s, low=1, high=86_400, unit=" s")
        if self.window_spend_mc_max is not None:
            require_int(owner, "window_spend_mc_max", self.window_spend_mc_max, low=1, unit=" mc")
        if self.budget_pct_max is not None:
            require_int(owner, "budget_pct_max", self.budget_pct_max, low=1, high=100, unit=" %")


@dataclass(frozen=True, slots=True)
class KillSwitchState:
    """One kill switch, as a store keeps it (one row per ``(level, scope)``).

    Attributes:
        level, scope: which switch.
        tripped: True while calls are refused.
        mode: why it tripped (None while not tripped).
        tripped_at: when (aware UTC).
        by: the admin who tripped it, or ``automatic``.
        reason: a sentence for people.
        window_index, window_spend_mc: the aligned window being counted and its spend, mc.
        version: incremented by every change; the compare-and-set token.
    """

    level: Level
    scope: str
    tripped: bool = False
    mode: KillMode | None = None
    tripped_at: datetime | None = None
    by: str | None = None
    reason: str = ""
    window_index: int | None = None
    window_spend_mc: int = 0
    version: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", parse_level("kill switch", self.level))
        require_text("kill_switch", "scope", self.scope)

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record of this state."""
        at = self.tripped_at
        return {
            "level": str(self.level), "scope": self.scope, "tripped": self.tripped,
            "mode": None if self.mode is None else str(self.mode),
            "tripped_at": None if at is None else at.isoformat(),
            "by": self.by, "reason": self.reason, "window_index": self.window_index,
            "window_spend_mc": self.window_spend_mc, "version": self.version,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> KillSwitchState:
        """Read a record written by :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        mode = rec.get_opt_str(record, "mode")
        return cls(
            level=parse_level("kill switch", rec.get_str(record, "level")), scope=rec.get_str(record, "scope"),
            tripped=rec.get_bool(record, "tripped"), mode=None if mode is None else KillMode(mode),
            tripped_at=rec.get_opt_dt(record, "tripped_at"), by=rec.get_opt_str(record, "by"),
            reason=rec.get_str(record, "reason"), window_index=rec.get_opt_int(record, "window_index"),
            window_spend_mc=rec.get_int(record, "window_spend_mc"), version=rec.get_int(record, "version"),
        )


_next_version = versioner(KillSwitchState)  # a counted window: no __post_init__ again


@dataclass(frozen=True, slots=True)
class KillSwitchStep:
    """The new state and the ``kill_switch`` events to append (``tripped`` or ``reset``)."""

    state: KillSwitchState
    events: tuple[Event, ...] = ()


def trip(state: KillSwitchState, now: datetime, *, by: str, reason: str,
         mode: KillMode = KillMode.MANUAL) -> KillSwitchStep:
    """Trip the switch; tripping a tripped switch changes nothing (the first cause stands).

    Raises:
        ValueError: on a naive ``now``; DefenseConfigError on an empty ``by`` or ``reason``.
    """
    require_aware("now", now)
    require_text("kill_switch trip", "by", by)
    require_text("kill_switch trip", "reason", reason)
    if state.tripped:
        return KillSwitchStep(state)
    tripped = replace(state, tripped=True, mode=mode, tripped_at=now, by=by, reason=reason,
                      version=state.version + 1)
    return KillSwitchStep(tripped, (_event(tripped, "tripped", now, {"mode": str(mode), "by": by,
                                                                     "reason": reason}),))


def reset(state: KillSwitchState, now: datetime, *, by: str) -> KillSwitchStep:
    """An admin's reset: calls are admitted again; resetting an untripped switch changes nothing.

    The window count restarts, so the spend that tripped it does not trip it again at once.
    """
    require_aware("now", now)
    require_text("kill_switch reset", "by", by)
    if not state.tripped:
        return KillSwitchStep(state)
    cleared = replace(state, tripped=False, mode=None, tripped_at=None, by=None, reason="",
                      window_index=None, window_spend_mc=0, version=state.version + 1)
    detail: dict[str, JsonScalar] = {"by": by, "was_mode": None if state.mode is None else str(state.mode),
                                     "was_reason": state.reason}
    return KillSwitchStep(cleared, (_event(cleared, "reset", now, detail),))


def record_spend(state: KillSwitchState, config: KillSwitchConfig, cost_mc: int, now: datetime, *,
                 budget_settled_mc: int | None = None, budget_limit_mc: int | None = None) -> KillSwitchStep:
    """Count a settled cost of the scope and trip the switch if an automatic trigger fires.

    Args:
        state: the switch as read.
        config: its automatic triggers.
        cost_mc: the settled cost, millicents (>= 0).
        now: the settle time (aware UTC).
        budget_settled_mc, budget_limit_mc: the scope's budget account after this
            settle (both or neither), millicents; needed for ``budget_pct_max``.

    Raises:
        ValueError: on a negative cost, a naive ``now``, or only one budget figure.
    """
    if type(cost_mc) is not int or cost_mc < 0:
        raise ValueError(f"cost_mc must be a non-negative integer of millicents, got {cost_mc!r}")
    if (budget_settled_mc is None) != (budget_limit_mc is None):
        raise ValueError("pass both budget_settled_mc and budget_limit_mc, or neither")
    index = window_index(now, config.window_s)
    if state.window_index is not None and index <= state.window_index:
        window, spend = state.window_index, state.window_spend_mc + cost_mc
    else:
        window, spend = index, cost_mc
    counted = _next_version(state, window_index=window, window_spend_mc=spend)
    if state.tripped:
        return KillSwitchStep(counted)
    limit = config.window_spend_mc_max
    if limit is not None and spend > limit:
        why = (f"settled {format_usd(spend)} in one {config.window_s} s window, above the "
               f"{format_usd(limit)} kill threshold")
        return trip(counted, now, by="automatic", reason=why, mode=KillMode.WINDOW_SPEND)
    pct = config.budget_pct_max
    if (pct is not None and budget_settled_mc is not None and budget_limit_mc is not None
            and budget_limit_mc > 0 and budget_settled_mc * 100 > pct * budget_limit_mc):
        why = (f"settled {format_usd(budget_settled_mc)} of its {format_usd(budget_limit_mc)} budget, above "
               f"the {pct}% kill threshold")
        return trip(counted, now, by="automatic", reason=why, mode=KillMode.BUDGET_FRACTION)
    return KillSwitchStep(counted)


_RECORD_KEYS = frozenset(KillSwitchState(Level.NAMESPACE, "x").to_record())


def count_record(record: Mapping[str, JsonScalar], config: KillSwitchConfig, cost_mc: int,
                 now: datetime) -> Mapping[str, JsonScalar] | None:
    """The common settle of an untripped switch, on its record: what ``record_spend(...).state.to_record()`` gives.

    For a settle without budget figures (the breaker chain's: the budget trigger is checked at
    admit) that does not take the window over ``window_spend_mc_max``: the window counters and the
    version change, nothing else, so no :class:`KillSwitchState` is built. None when
    :func:`record_spend` must decide (a tripped switch, a trip, a record of another shape).

    Raises:
        ValueError: on a naive ``now``.
    """
    counters = switch_counters(record)
    if counters is None or type(cost_mc) is not int or cost_mc < 0:
        return None
    counted = count_switch(counters, config, cost_mc, epoch_seconds(now))
    return None if counted is None else counted_record(record, counted)


SwitchCounters = tuple[int | None, int, int]
"""An untripped switch's counters: window index, its spend, version (:func:`switch_counters`)."""


def switch_counters(record: Mapping[str, JsonScalar]) -> SwitchCounters | None:
    """The counters of an untripped switch's record of the current shape, well typed; else None (``record_spend``
    decides)."""
    if record.get("tripped") is not False or len(record) != len(_RECORD_KEYS) or not _RECORD_KEYS.issuperset(record):
        return None
    old_index, old_spend, version = record["window_index"], record["window_spend_mc"], record["version"]
    if type(old_spend) is not int or type(version) is not int or not (old_index is None or type(old_index) is int):
        return None
    return old_index, old_spend, version


def count_switch(counters: SwitchCounters, config: KillSwitchConfig, cost_mc: int,
                 now_s: int) -> SwitchCounters | None:
    """The common settle of an untripped switch, on its counters (:func:`count_record` without the record).

    Args:
        counters: the switch's counters (:func:`switch_counters`).
        config: its automatic triggers.
        cost_mc: the settled cost, millicents (an int >= 0: the caller checks).
        now_s: the settle time, whole seconds since the epoch (:func:`.windows.epoch_seconds`).

    Returns:
        The counters after the settle (one version up, :func:`counted_record`), or None when the
        window goes over ``window_spend_mc_max`` (``record_spend`` trips the switch).
    """
    old_index, old_spend, version = counters
    index = now_s // config.window_s
    window, spend = (old_index, old_spend + cost_mc) if old_index is not None and index <= old_index else (index,
                                                                                                          cost_mc)
    limit = config.window_spend_mc_max
    if limit is not None and spend > limit:
        return None  # it trips
    return window, spend, version + 1


def counted_record(record: Mapping[str, JsonScalar], counted: SwitchCounters) -> dict[str, JsonScalar]:
    """``record`` with the counters :func:`count_switch` gave it."""
    fields = dict(record)
    fields["window_index"], fields["window_spend_mc"], fields["version"] = counted
    return fields


def check_kill_switch(states: Iterable[KillSwitchState]) -> Verdict | None:
    """Refuse the call if any switch over its scopes is tripped (the broadest level answers).

    Args:
        states: the switches of the call's scopes (missing rows are untripped).
    """
    order = {level: i for i, level in enumerate(LEVELS)}
    tripped = sorted((s for s in states if s.tripped), key=lambda s: order[s.level])
    if not tripped:
        return None
    first = tripped[0]
    when = rec.iso(first.tripped_at)
    return Verdict(
        code=Code.KILL_SWITCH, rule=Rule.KILL_SWITCH, detector=str(first.mode or KillMode.MANUAL),
        level=first.level, scope=first.scope, retry_after_s=None,
        evidence={"tripped_at": when, "by": first.by, "reason": first.reason,
                  "mode": None if first.mode is None else str(first.mode)},
        message=(
            f"kill_switch: the kill switch of {first.level} {first.scope!r} was tripped at {when} by "
            f"{first.by} ({first.reason}); every call is refused until an admin resets it."
        ),
    )


def _event(state: KillSwitchState, code: str, now: datetime, detail: dict[str, JsonScalar]) -> Event:
    full: dict[str, JsonScalar] = {"window_spend_mc": state.window_spend_mc, **detail}
    return Event(ts=now, kind="kill_switch", code=code, level=str(state.level), scope=state.scope,
                 detail=full)
