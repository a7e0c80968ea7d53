"""Layer 1: a scheduled run's hard deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from comptroller.domain.codes import Code
from comptroller.domain.defenses.deadline import RunKind, ScheduledRun, check_deadline, find_run, remaining_s
from comptroller.domain.defenses.errors import DefenseConfigError, UnknownScopeError
from comptroller.domain.defenses.verdict import Rule
from comptroller.domain.scopes import Level

T0 = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)
RUN = ScheduledRun(run_id="hb-42", kind=RunKind.HEARTBEAT, level=Level.AGENT, scope="acme|alice|ceo",
                   opened_at=T0, duration_s_max=300)


@pytest.mark.parametrize(("offset_s", "refused"), [
    (0, False),
    (299.999, False),
    (300, True),
    (301, True),
    (-5, False),  # a call stamped before the run opened (clock skew) is inside it
])
def test_calls_at_or_after_the_deadline_are_refused(offset_s: float, refused: bool) -> None:
    """A call is admitted strictly before opened_at + duration_s_max and refused from then on."""
    verdict = check_deadline(RUN, T0 + timedelta(seconds=offset_s))
    assert (verdict is not None) is refused


def test_the_refusal_names_the_run_its_deadline_and_how_late() -> None:
    """deadline_exceeded carries the run, the deadline, the lateness and no retry-after."""
    verdict = check_deadline(RUN, RUN.deadline_at + timedelta(seconds=12))
    assert verdict is not None
    assert (verdict.code, verdict.rule, verdict.level, verdict.scope) == (
        Code.DEADLINE_EXCEEDED, Rule.DEADLINE, Level.AGENT, RUN.scope)
    assert verdict.retry_after_s is None
    assert verdict.evidence["late_s"] == 12.0
    assert verdict.evidence["deadline_at"] == (T0 + timedelta(seconds=RUN.duration_s_max)).isoformat()
    assert "hb-42" in verdict.message and "300 s" in verdict.message


def test_remaining_seconds_cap_a_lease() -> None:
    """remaining_s counts down to 0 and stays there."""
    assert remaining_s(RUN, T0 + timedelta(seconds=100)) == RUN.duration_s_max - 100
    assert remaining_s(RUN, T0 + timedelta(hours=1)) == 0.0


@pytest.mark.parametrize(("changes", "error", "words"), [
    ({"duration_s_max": 0}, DefenseConfigError, "duration_s_max"),
    ({"duration_s_max": -1}, DefenseConfigError, "duration_s_max"),
    ({"duration_s_max": 8 * 86_400}, DefenseConfigError, "duration_s_max"),
    ({"run_id": ""}, DefenseConfigError, "run_id"),
    ({"kind": "weekly"}, DefenseConfigError, "heartbeat"),
    ({"level": "galaxy"}, DefenseConfigError, "galaxy"),
    ({"opened_at": datetime(2024, 6, 1)}, ValueError, "aware"),
])
def test_invalid_runs_are_clear_errors(changes: dict[str, object], error: type[Exception], words: str) -> None:
    """A non-positive duration, an empty id, an unknown kind or a naive time raises a naming error."""
    fields = {"run_id": "r", "kind": "cron", "level": Level.AGENT, "scope": "s", "opened_at": T0,
              "duration_s_max": 60, **changes}
    with pytest.raises(error, match=words):
        ScheduledRun(**fields)  # type: ignore[arg-type]


def test_an_unknown_run_id_is_an_error_not_a_pass() -> None:
    """A call naming a run nobody opened raises UnknownScopeError instead of passing unchecked."""
    assert find_run({"hb-42": RUN}, "hb-42") is RUN
    with pytest.raises(UnknownScopeError, match="hb-43"):
        find_run({"hb-42": RUN}, "hb-43")
