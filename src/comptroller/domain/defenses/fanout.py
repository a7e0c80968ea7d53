"""A cap on fan-out: at most ``max_in_flight`` live calls per task, conversation or agent.

Source: "Multi-Agent Mesh Economics" (an orchestrator fanning out to more than about 9
parallel sub-agents makes the synthesis context explode); DESIGN.md habit 6 (a limit on
everything, fan-out included).

Counted from live reservations, atomically: one state row per capped scope holds the
ids of its calls in flight with their lease expiry. The admit guard adds the call's id
(in the reservation's transaction, so only an admitted call counts) and refuses with
``fan_out_exceeded`` when the row already holds ``max_in_flight`` live ids; the settle
and release guard removes it. An id whose lease expired (a crashed caller) is aged out
on every change, like the reservation it stands for. Pure: ``now`` is an argument.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses._checks import parse_level, require_int
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.defenses.windows import seconds_until
from comptroller.domain.scopes import Level

__all__ = ["FAN_OUT_LEVELS", "FanOutConfig", "InFlight", "InFlightStep", "admit_in_flight", "end_in_flight"]

FAN_OUT_LEVELS: tuple[Level, ...] = (Level.AGENT, Level.CONVERSATION, Level.TASK)


@dataclass(frozen=True, slots=True)
class FanOutConfig:
    """``max_in_flight`` per level (agent, conversation, task); a level not named is not capped.

    Raises:
        DefenseConfigError: on another level, or a cap outside 1..100,000.
    """

    max_in_flight: Mapping[Level, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checked: dict[Level, int] = {}
        for level, cap in self.max_in_flight.items():
            parsed = parse_level("fan_out", level)
            if parsed not in FAN_OUT_LEVELS:
                raise DefenseConfigError(f"fan_out caps levels {', '.join(FAN_OUT_LEVELS)}, not {parsed}")
            checked[parsed] = require_int("fan_out", f"max_in_flight.{parsed}", cap, low=1, high=100_000)
        object.__setattr__(self, "max_in_flight", checked)


@dataclass(frozen=True, slots=True)
class InFlight:
    """The calls in flight of one scope, as a store keeps it.

    Attributes:
        level, scope: the capped scope.
        live: ``(call id, lease expiry)`` of each call admitted and not yet settled or released.
        version: incremented by every change; the compare-and-set token.
    """

    level: Level
    scope: str
    live: tuple[tuple[str, datetime], ...] = ()
    version: int = 0

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record (the live ids as JSON text, expiries as UTC epoch seconds)."""
        return {"level": str(self.level), "scope": self.scope,
                "live": json.dumps([[c, at.timestamp()] for c, at in self.live]), "version": self.version}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> InFlight:
        """Read :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        raw = json.loads(rec.get_str(record, "live"))
        try:
            live = tuple((str(c), datetime.fromtimestamp(float(at), UTC)) for c, at in raw)
        except (TypeError, ValueError):
            raise ValueError(f"state record field 'live' must be [call_id, expiry] rows, got {raw!r:.200}") from None
        return cls(Level(rec.get_str(record, "level")), rec.get_str(record, "scope"), live,
                   rec.get_int(record, "version"))


@dataclass(frozen=True, slots=True)
class InFlightStep:
    """The new state (write it if its version moved), and the refusal if the cap is reached."""

    state: InFlight
    verdict: Verdict | None = None


def admit_in_flight(state: InFlight, max_in_flight: int, call_id: str, ttl_s: float, now: datetime) -> InFlightStep:
    """Add a call to the scope's flight, or refuse it when ``max_in_flight`` live calls are out.

    Args:
        state: the scope's calls in flight as read.
        max_in_flight: the cap.
        call_id: the reservation's idempotency key (admitting it again changes nothing).
        ttl_s: its lease, seconds (the id ages out with it).
        now: the admission time (aware UTC).
    """
    live = tuple((c, at) for c, at in state.live if at > now)
    if any(c == call_id for c, _ in live):
        return InFlightStep(state)
    if len(live) >= max_in_flight:
        soonest = min(at for _, at in live)
        return InFlightStep(state, Verdict(
            code=Code.FAN_OUT_EXCEEDED, rule=Rule.FAN_OUT, detector="max_in_flight", level=state.level,
            scope=state.scope, retry_after_s=seconds_until(soonest, now),
            evidence={"in_flight": len(live), "max_in_flight": max_in_flight},
            message=(f"fan_out_exceeded: {state.level} {state.scope!r} already has {len(live)} calls in flight "
                     f"(max_in_flight {max_in_flight}); start this one when another ends, or fan out less "
                     "(past about 9 parallel sub-agents the synthesis context explodes).")))
    entry = (call_id, now + timedelta(seconds=ttl_s))
    return InFlightStep(replace(state, live=(*live, entry), version=state.version + 1))


def end_in_flight(state: InFlight, call_id: str, now: datetime) -> InFlightStep:
    """Remove a settled or released call (and every expired one) from the scope's flight."""
    live = tuple((c, at) for c, at in state.live if c != call_id and at > now)
    if live == state.live:
        return InFlightStep(state)
    return InFlightStep(replace(state, live=live, version=state.version + 1))
