"""Layer 2a: at most N re-attempts of one task per UTC day (default 3).

Source: "Multi-Agent Mesh Economics" (layer 2, recovery anti-loops: max 3
re-attempts per task per day). An *attempt* is one try at a task, named by the
caller with an attempt id (a scheduler's run id, a retry counter): the calls
inside one attempt are free, a new attempt id counts. Per task and UTC day the
first attempt and ``retries_max_per_day`` re-attempts are admitted; the next
attempt is refused with ``retry_limit`` until 00:00 UTC.

Idempotent by the attempt id: admitting an attempt seen today again changes
nothing, so a retried admission is never counted twice. The state holds at most
``retries_max_per_day + 1`` ids, so it stays small.

Unlabelled retries count too (:func:`check_unlabelled`): a call of a task that names no
attempt carries its request family (the request's fingerprint). Within one attempt the
steps of a task are different requests; a family seen again in the current attempt
means the task started over, so it opens a new attempt (``auto-N``), labels or not.
The families of the current attempt are bounded (``FAMILIES_MAX``, oldest dropped).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses._checks import require_aware, require_int, require_text
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.scopes import Level

__all__ = ["FAMILIES_MAX", "RetryPolicy", "RetryState", "RetryStep", "check_attempt", "check_unlabelled", "utc_day"]

FAMILIES_MAX = 64
_FAMILY_CHARS = 16


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The re-attempt limit.

    Attributes:
        retries_max_per_day: re-attempts allowed per task per UTC day, beyond the
            first attempt (0..1,000; default 3).

    Raises:
        DefenseConfigError: on a negative or non-integer limit.
    """

    retries_max_per_day: int = 3

    def __post_init__(self) -> None:
        require_int("retry_policy", "retries_max_per_day", self.retries_max_per_day, low=0, high=1_000)

    @property
    def attempts_max_per_day(self) -> int:
        """Attempts admitted per task per UTC day: the first plus the re-attempts."""
        return 1 + self.retries_max_per_day


@dataclass(frozen=True, slots=True)
class RetryState:
    """The attempts of one task on one UTC day, as a store keeps it (one row per task scope).

    Attributes:
        scope: the task's scope key (``ns|tenant|task``).
        day: the UTC day counted, ISO date (None before the first attempt).
        attempt_ids: the attempts admitted that day, in order.
        families: the request families (16 hex digits each) of the current unlabelled attempt.
        version: incremented by every change; the compare-and-set token.
    """

    scope: str
    day: str | None = None
    attempt_ids: tuple[str, ...] = ()
    version: int = 0
    families: tuple[str, ...] = ()

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record (the attempt ids and families as JSON text)."""
        return {"scope": self.scope, "day": self.day, "attempt_ids": json.dumps(list(self.attempt_ids)),
                "families": json.dumps(list(self.families)), "version": self.version}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> RetryState:
        """Read a record written by :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        ids = json.loads(rec.get_str(record, "attempt_ids"))
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"state record field 'attempt_ids' must be a JSON list of strings, got {ids!r}")
        families = json.loads(str(record.get("families") or "[]"))
        return cls(scope=rec.get_str(record, "scope"), day=rec.get_opt_str(record, "day"),
                   attempt_ids=tuple(ids), version=rec.get_int(record, "version"),
                   families=tuple(str(f) for f in families))


@dataclass(frozen=True, slots=True)
class RetryStep:
    """The new state, and the refusal if the attempt is over the limit (then the state is unchanged)."""

    state: RetryState
    verdict: Verdict | None = None


def utc_day(now: datetime) -> str:
    """The UTC calendar day of ``now``, ISO date."""
    return require_aware("now", now).astimezone(UTC).date().isoformat()


def check_attempt(state: RetryState, policy: RetryPolicy, attempt_id: str, now: datetime) -> RetryStep:
    """Admit or refuse one attempt of the task.

    Args:
        state: the task's attempts as read.
        policy: the limit.
        attempt_id: the caller's id for this attempt (non-empty).
        now: the admission time (aware UTC).

    Returns:
        A step with the attempt recorded, or the unchanged state and a
        ``retry_limit`` verdict (detector ``retries_per_day``) whose
        ``retry_after_s`` runs to the next 00:00 UTC.

    Raises:
        ValueError: on a naive ``now``; DefenseConfigError on an empty attempt id.
    """
    require_text("attempt", "attempt_id", attempt_id)
    day = utc_day(now)
    seen = state.attempt_ids if state.day == day else ()
    if attempt_id in seen:
        return RetryStep(state)
    if len(seen) >= policy.attempts_max_per_day:
        return RetryStep(state, _refusal(state.scope, day, seen, policy, now))
    return RetryStep(replace(state, day=day, attempt_ids=(*seen, attempt_id), version=state.version + 1))


def check_unlabelled(state: RetryState, policy: RetryPolicy, family: str, now: datetime) -> RetryStep:
    """Count an unlabelled call of the task: a request family seen again in this attempt starts a new one.

    Args:
        state: the task's attempts as read.
        policy: the limit.
        family: the request's family (its fingerprint; non-empty).
        now: the admission time (aware UTC).

    Returns:
        A step with the family recorded (and a new ``auto-N`` attempt when the family
        repeats, or on the day's first call), or the unchanged state and a
        ``retry_limit`` verdict when that new attempt is over the limit.

    Raises:
        ValueError: on a naive ``now``; DefenseConfigError on an empty family.
    """
    family = require_text("attempt", "family", family)[:_FAMILY_CHARS]
    day = utc_day(now)
    today = state.day == day
    seen = state.attempt_ids if today else ()
    families = state.families if today else ()
    if seen and family not in families:
        return RetryStep(replace(state, families=(*families, family)[-FAMILIES_MAX:], version=state.version + 1))
    if len(seen) >= policy.attempts_max_per_day:
        return RetryStep(state, _refusal(state.scope, day, seen, policy, now))
    attempt = f"auto-{len(seen) + 1}"
    return RetryStep(replace(state, day=day, attempt_ids=(*seen, attempt), families=(family,),
                             version=state.version + 1))


def _refusal(scope: str, day: str, seen: tuple[str, ...], policy: RetryPolicy, now: datetime) -> Verdict:
    midnight = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
    wait = (midnight - now).total_seconds()
    return Verdict(
        code=Code.RETRY_LIMIT, rule=Rule.LOOP, detector="retries_per_day", level=Level.TASK, scope=scope,
        retry_after_s=wait,
        evidence={
            "day": day, "attempts": len(seen), "retries_max_per_day": policy.retries_max_per_day,
            "first_attempt_id": seen[0] if seen else None, "last_attempt_id": seen[-1] if seen else None,
            "resets_at": midnight.isoformat(),
        },
        message=(
            f"retry_limit: task {scope!r} was attempted {len(seen)} times on {day} (UTC): the first attempt "
            f"and {policy.retries_max_per_day} re-attempts, the most allowed per day. Fix what makes it "
            f"fail, wait until 00:00 UTC (in {wait:.0f} s), or raise retries_max_per_day."
        ),
    )
