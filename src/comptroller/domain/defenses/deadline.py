"""Layer 1: a hard deadline per scheduled run (heartbeat, cron job).

Source: "Multi-Agent Mesh Economics" (layer 1: hard per-cron timeouts); "Running 6
AI Agents in Production" (agents woken on 30-minute heartbeats). A scheduled run
is opened with a maximum duration; a call made at or after ``opened_at +
duration_s_max`` is refused with ``deadline_exceeded``, so a stuck heartbeat cannot
spend past its slot. Waiting never helps (the deadline only recedes): the
scheduler opens a new run.

A run may also carry a spend cap (``spend_cap_mc``): every admitted call of the run
adds its ceiling to ``committed_mc`` (conservative: the ceiling, never credited back,
so the cap holds whatever the calls settle), and a call whose ceiling would take it
past the cap is refused with ``deadline_exceeded`` (detector ``run_spend_cap``).

A call naming a run that was never opened for its tenant is refused with
``unknown_run`` (:func:`unknown_run`): a typo or a forgotten open must not pass
unchecked. Run rows are keyed per tenant (:func:`run_key`), so one tenant can never
name, extend or exhaust another's run.

The engine should also shorten a call's reservation lease to
:func:`remaining_s`, so no call of the run outlives it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses._checks import parse_level, require_aware, require_seconds, require_text
from comptroller.domain.defenses.errors import DefenseConfigError, UnknownScopeError
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.scopes import Attribution, Level, scope_key
from comptroller.domain.state import StateKey

__all__ = ["RunKind", "ScheduledRun", "check_deadline", "check_run_cap", "find_run", "remaining_s", "run_key",
           "unknown_run"]

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
        spend_cap_mc: the most the run's admitted ceilings may add up to, millicents (None: no cap).
        committed_mc: the ceilings of the run's calls admitted so far, millicents.
        version: incremented by every change; the compare-and-set token.

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
    spend_cap_mc: int | None = None
    committed_mc: int = 0
    version: int = 1

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
                "opened_at": self.opened_at.isoformat(), "duration_s_max": self.duration_s_max,
                "spend_cap_mc": self.spend_cap_mc, "committed_mc": self.committed_mc, "version": self.version}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> ScheduledRun:
        """Read a record written by :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        opened = rec.get_opt_dt(record, "opened_at")
        duration = record.get("duration_s_max")
        if opened is None or isinstance(duration, bool) or not isinstance(duration, int | float):
            raise ValueError(f"run record needs opened_at and a numeric duration_s_max, got {dict(record)!r}")
        return cls(run_id=rec.get_str(record, "run_id"), kind=RunKind(rec.get_str(record, "kind")),
                   level=Level(rec.get_str(record, "level")), scope=rec.get_str(record, "scope"),
                   opened_at=opened, duration_s_max=float(duration),
                   spend_cap_mc=rec.get_opt_int(record, "spend_cap_mc") if "spend_cap_mc" in record else None,
                   committed_mc=int(record.get("committed_mc") or 0), version=int(record.get("version") or 1))

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


def run_key(attribution: Attribution, run_id: str) -> StateKey:
    """The state key of a run: the run id within the call's tenant (tenants are walls, DESIGN.md rule 13)."""
    tenant = dict(attribution.scopes())[Level.TENANT]
    return StateKey("run", scope_key(tenant, run_id))


def unknown_run(run_id: str, attribution: Attribution) -> Verdict:
    """The refusal of a call naming a run never opened for its tenant (waiting never helps)."""
    tenant = dict(attribution.scopes())[Level.TENANT]
    return Verdict(
        code=Code.UNKNOWN_RUN, rule=Rule.DEADLINE, detector="unknown_run", level=Level.TENANT, scope=tenant,
        retry_after_s=None, evidence={"run_id": run_id},
        message=(f"unknown_run: no scheduled run {run_id!r} is open for tenant {attribution.tenant!r}, so its "
                 "deadline cannot be checked and the call was refused. Open it first: POST /v1/runs with "
                 '{"id": "%s", "duration_s_max": 1800} (gateway), Comptroller.scheduled_run(...) (SDK) or '
                 "Engine.open_run(...); or drop the run id from the request." % run_id))


def check_run_cap(run: ScheduledRun, ceiling_mc: int) -> tuple[ScheduledRun, Verdict | None]:
    """Add a call's ceiling to the run's committed spend, or refuse it past the run's spend cap."""
    committed = run.committed_mc + ceiling_mc
    if run.spend_cap_mc is None:
        return run, None
    if committed > run.spend_cap_mc:
        return run, Verdict(
            code=Code.DEADLINE_EXCEEDED, rule=Rule.DEADLINE, detector="run_spend_cap", level=run.level,
            scope=run.scope, retry_after_s=None,
            evidence={"run_id": run.run_id, "spend_cap_mc": run.spend_cap_mc, "committed_mc": run.committed_mc,
                      "requested_mc": ceiling_mc},
            message=(f"deadline_exceeded: run {run.run_id!r} has a spend cap of {run.spend_cap_mc} mc and its "
                     f"admitted calls already hold {run.committed_mc} mc of ceilings; this call's {ceiling_mc} mc "
                     "would pass it. End the run, or open a new one with a larger spend cap."))
    return replace(run, committed_mc=committed, version=run.version + 1), None
