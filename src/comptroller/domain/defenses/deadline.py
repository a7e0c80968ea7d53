"""Layer 1: a hard deadline per scheduled run (heartbeat, cron job).

Source: "Multi-Agent Mesh Economics" (layer 1: hard per-cron timeouts); "Running 6
AI Agents in Production" (agents woken on 30-minute heartbeats). A scheduled run
is opened with a maximum duration; a call made at or after ``opened_at +
duration_s_max`` is refused with ``deadline_exceeded``, so a stuck heartbeat cannot
spend past its slot. Waiting never helps (the deadline only recedes): the
scheduler opens a new run.

The engine should also shorten a call's reservation lease to
:func:`remaining_s`, so no call of the run outlives it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses._checks import parse_level, require_aware, require_seconds, require_text
from comptroller.domain.defenses.errors import DefenseConfigError, UnknownScopeError
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.scopes import Level

__all__ = ["RunKind", "ScheduledRun", "check_deadline", "find_run", "remaining_s"]

_WEEK_S = 7 * 86_400.0


class RunKind(StrEnum):
    """What scheduled the run."""

    HEARTBEAT = "heartbeat"
    CRON = "cron"
    SCHEDULED = "scheduled"


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """A scheduled run and its deadline.

    Attributes:
        run_id: the scheduler's id for this run (unique per run).
        kind: heartbeat, cron or scheduled.
        level, scope: who the run belongs to (usually the agent's scope key).
        opened_at: when the run opened (aware UTC).
        duration_s_max: the longest the run may last, seconds (0 < d <= 7 days).

    Raises:
        DefenseConfigError: on an empty id or scope, an unknown kind, or a duration
            outside (0, 604,800] s.
        ValueError: on a naive ``opened_at``.
    """

    run_id: str
    kind: RunKind
    level: Level
    scope: str
    opened_at: datetime
    duration_s_max: float

    def __post_init__(self) -> None:
        require_text("run", "run_id", self.run_id)
        require_text("run", "scope", self.scope)
        try:
            object.__setattr__(self, "kind", RunKind(str(self.kind)))
        except ValueError:
            allowed = ", ".join(RunKind)
            raise DefenseConfigError(f"unknown run kind {self.kind!r}; use one of: {allowed}") from None
        object.__setattr__(self, "level", parse_level("run", self.level))
        require_aware("run.opened_at", self.opened_at)
        duration = require_seconds("run", "duration_s_max", self.duration_s_max, high=_WEEK_S)
        object.__setattr__(self, "duration_s_max", duration)

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record of this run."""
        return {"run_id": self.run_id, "kind": str(self.kind), "level": str(self.level), "scope": self.scope,
                "opened_at": self.opened_at.isoformat(), "duration_s_max": self.duration_s_max}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> ScheduledRun:
        """Read a record written by :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        opened = rec.get_opt_dt(record, "opened_at")
        duration = record.get("duration_s_max")
        if opened is None or isinstance(duration, bool) or not isinstance(duration, int | float):
            raise ValueError(f"run record needs opened_at and a numeric duration_s_max, got {dict(record)!r}")
        return cls(run_id=rec.get_str(record, "run_id"), kind=RunKind(rec.get_str(record, "kind")),
                   level=Level(rec.get_str(record, "level")), scope=rec.get_str(record, "scope"),
                   opened_at=opened, duration_s_max=float(duration))

    @property
    def deadline_at(self) -> datetime:
        """The first instant at which calls are refused (aware UTC)."""
        return self.opened_at + timedelta(seconds=self.duration_s_max)


def remaining_s(run: ScheduledRun, now: datetime) -> float:
    """Seconds left before the deadline (0 once it has passed); cap a call's lease to it."""
    return max(0.0, (run.deadline_at - require_aware("now", now)).total_seconds())


def find_run(runs: Mapping[str, ScheduledRun], run_id: str) -> ScheduledRun:
    """The open run with ``run_id``.

    Raises:
        UnknownScopeError: if no run with that id was opened (a typo, or a run from
            another store): the call must not pass unchecked.
    """
    run = runs.get(run_id)
    if run is None:
        raise UnknownScopeError(
            f"no scheduled run {run_id!r} is open ({len(runs)} known); open the run before its "
            "calls, or drop the run id from the request")
    return run


def check_deadline(run: ScheduledRun, now: datetime) -> Verdict | None:
    """Refuse a call made at or after the run's deadline.

    Args:
        run: the run the call belongs to.
        now: the admission time (aware UTC).

    Returns:
        None while ``now < run.deadline_at``; else a ``deadline_exceeded`` verdict
        (detector ``run_deadline``, no ``retry_after_s``: waiting never helps).
    """
    require_aware("now", now)
    if now < run.deadline_at:
        return None
    late_s = (now - run.deadline_at).total_seconds()
    return Verdict(
        code=Code.DEADLINE_EXCEEDED, rule=Rule.DEADLINE, detector="run_deadline", level=run.level,
        scope=run.scope, retry_after_s=None,
        evidence={
            "run_id": run.run_id, "kind": str(run.kind), "opened_at": run.opened_at.isoformat(),
            "duration_s_max": run.duration_s_max, "deadline_at": run.deadline_at.isoformat(),
            "late_s": late_s,
        },
        message=(
            f"deadline_exceeded: {run.kind} run {run.run_id!r} of {run.level} {run.scope!r} opened at "
            f"{run.opened_at.isoformat()} with a maximum duration of {run.duration_s_max:g} s; this call "
            f"came {late_s:.1f} s after its deadline ({run.deadline_at.isoformat()}). End the run and let "
            "the scheduler open a new one, or raise duration_s_max."
        ),
    )
