"""Layer 2a: at most N re-attempts of one task per UTC day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.codes import Code
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.retries import (
    FAMILIES_MAX,
    RetryPolicy,
    RetryState,
    check_attempt,
    check_unlabelled,
    utc_day,
)
from comptroller.domain.defenses.verdict import Rule
from comptroller.domain.scopes import Level

NOON = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
TASK = "acme|nightly-report"


def run_attempts(policy: RetryPolicy, ids: list[str], when: datetime = NOON) -> list[bool]:
    """Admit attempts in order; True for each admitted."""
    state, admitted = RetryState(scope=TASK), []
    for attempt in ids:
        step = check_attempt(state, policy, attempt, when)
        state = step.state
        admitted.append(step.verdict is None)
    return admitted


@pytest.mark.parametrize("retries", [0, 1, 3, 5])
def test_first_attempt_plus_n_retries_are_admitted_then_refused(retries: int) -> None:
    """Per task and day, 1 + retries_max_per_day attempts pass and the next is refused."""
    policy = RetryPolicy(retries_max_per_day=retries)
    ids = [f"a{i}" for i in range(retries + 3)]
    assert run_attempts(policy, ids) == [True] * (retries + 1) + [False] * 2


def test_default_is_three_reattempts() -> None:
    """The default allows the first attempt and three re-attempts (Mesh Economics)."""
    assert RetryPolicy().attempts_max_per_day == 4


def test_calls_inside_one_attempt_count_once() -> None:
    """Admitting the same attempt id again is idempotent: it neither counts nor changes the state."""
    policy = RetryPolicy(retries_max_per_day=0)
    state = check_attempt(RetryState(scope=TASK), policy, "a1", NOON).state
    again = check_attempt(state, policy, "a1", NOON + timedelta(minutes=5))
    assert again.verdict is None and again.state is state


def test_refusal_names_the_task_day_and_waits_until_utc_midnight() -> None:
    """retry_limit carries the task scope, the count, and retry-after until 00:00 UTC."""
    policy = RetryPolicy()
    state = RetryState(scope=TASK)
    for i in range(policy.attempts_max_per_day):
        state = check_attempt(state, policy, f"a{i}", NOON).state
    verdict = check_attempt(state, policy, "late", NOON).verdict
    assert verdict is not None
    assert (verdict.code, verdict.rule, verdict.level, verdict.scope) == (Code.RETRY_LIMIT, Rule.LOOP,
                                                                          Level.TASK, TASK)
    midnight = datetime(2024, 6, 2, tzinfo=UTC)
    assert verdict.retry_after_s == (midnight - NOON).total_seconds()
    assert verdict.evidence["attempts"] == policy.attempts_max_per_day
    assert "3 re-attempts" in verdict.message


def test_the_count_resets_on_the_next_utc_day() -> None:
    """A new UTC day starts a new count, even in a time zone where it is still the same day."""
    policy = RetryPolicy(retries_max_per_day=0)
    state = check_attempt(RetryState(scope=TASK), policy, "a1", NOON).state
    assert check_attempt(state, policy, "a2", NOON).verdict is not None
    tomorrow = datetime(2024, 6, 2, 0, 0, 1, tzinfo=UTC)
    step = check_attempt(state, policy, "a2", tomorrow)
    assert step.verdict is None and step.state.day == "2024-06-02" and step.state.attempt_ids == ("a2",)


@pytest.mark.parametrize("value", [-1, 1.5, True, 1_001])
def test_invalid_limits_are_refused(value: object) -> None:
    """A negative, fractional, boolean or absurd limit raises an error naming the field."""
    with pytest.raises(DefenseConfigError, match="retries_max_per_day"):
        RetryPolicy(retries_max_per_day=value)  # type: ignore[arg-type]


@given(ids=st.lists(st.sampled_from([f"a{i}" for i in range(10)]), max_size=40),
       retries=st.integers(0, 6))
def test_never_more_than_the_limit_of_distinct_attempts(ids: list[str], retries: int) -> None:
    """Whatever the sequence of attempt ids, at most 1 + N distinct ones are admitted in a day."""
    policy, state = RetryPolicy(retries_max_per_day=retries), RetryState(scope=TASK)
    admitted: set[str] = set()
    for attempt in ids:
        step = check_attempt(state, policy, attempt, NOON)
        state = step.state
        if step.verdict is None:
            admitted.add(attempt)
    assert len(admitted) <= policy.attempts_max_per_day
    assert len(state.attempt_ids) == len(admitted)
    assert state.day == (utc_day(NOON) if ids else None)


def run_unlabelled(policy: RetryPolicy, families: list[str], when: datetime = NOON) -> tuple[list[bool], RetryState]:
    """Admit unlabelled calls of the task in order; True for each admitted, and the last state."""
    state, admitted = RetryState(scope=TASK), []
    for family in families:
        step = check_unlabelled(state, policy, family, when)
        state = step.state
        admitted.append(step.verdict is None)
    return admitted, state


def test_an_unlabelled_task_with_distinct_steps_is_one_attempt() -> None:
    """A task whose calls are all different requests is one attempt, however many steps it has."""
    admitted, state = run_unlabelled(RetryPolicy(), [f"step{i}" for i in range(40)])
    assert all(admitted) and state.attempt_ids == ("auto-1",)


def test_an_unlabelled_retry_of_the_task_is_an_attempt() -> None:
    """Repeating a request family starts a new attempt; past the limit the next start is refused."""
    policy = RetryPolicy(retries_max_per_day=2)
    one_attempt = ["plan", "code", "test"]
    admitted, state = run_unlabelled(policy, one_attempt * (policy.attempts_max_per_day + 1))
    allowed = len(one_attempt) * policy.attempts_max_per_day
    assert admitted == [True] * allowed + [False] * len(one_attempt)
    assert len(state.attempt_ids) == policy.attempts_max_per_day


def test_an_identical_unlabelled_retry_is_an_attempt_each_time() -> None:
    """The same request again and again is one attempt per call: the first and N re-attempts pass."""
    policy = RetryPolicy()
    admitted, _ = run_unlabelled(policy, ["same"] * 10)
    assert admitted == [True] * policy.attempts_max_per_day + [False] * (10 - policy.attempts_max_per_day)


def test_unlabelled_families_stay_bounded_and_round_trip() -> None:
    """The current attempt keeps at most FAMILIES_MAX families, and the record reads back equal."""
    _, state = run_unlabelled(RetryPolicy(), [f"f{i}" for i in range(FAMILIES_MAX * 2)])
    assert len(state.families) == FAMILIES_MAX
    assert RetryState.from_record(state.to_record()) == state
