"""A task's re-attempts per UTC day: defense layer 2 counts every move into in_progress (virtual time)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from actions_kit import Workers
from hypothesis import given, settings
from hypothesis import strategies as st

from comptroller.actions_config import TaskSettings, parse_actions
from comptroller.clock import VirtualClock
from comptroller.domain.codes import Code
from comptroller.domain.defenses.retries import RetryPolicy
from comptroller.domain.tasks import TaskError, TaskRefusedError, TaskStatus
from comptroller.engine.actions import ActionService
from comptroller.engine.tasks import TaskService
from comptroller.storage import store_from_url

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
SETTINGS = TaskSettings(chain={"lead": ["writer"]})
MOVES = [TaskStatus.IN_PROGRESS, TaskStatus.FAILED, TaskStatus.BLOCKED, TaskStatus.TODO, TaskStatus.DONE]
RE_RUNS = [TaskStatus.FAILED, TaskStatus.BLOCKED, TaskStatus.TODO]  # ways out of in_progress, then back in


def _tasks(clock: VirtualClock, retries: RetryPolicy | None) -> TaskService:
    store = store_from_url("memory://")
    return TaskService(store, clock, ActionService(store, clock, parse_actions({})), SETTINGS, retries=retries)


def _started(tasks: TaskService) -> None:
    tasks.create("acme", "t1", "publish the digest", by="lead", status=TaskStatus.TODO, actions_min=0)
    tasks.assign("acme", "t1", "writer", by="lead")
    tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")  # the day's first attempt


def _rerun(tasks: TaskService, out: TaskStatus) -> None:
    tasks.move("acme", "t1", out, by="writer")
    tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")


@pytest.mark.parametrize("retries_max", [0, 1, 3])
def test_re_attempts_past_the_limit_are_refused_with_retry_limit_until_utc_midnight(retries_max: int) -> None:
    """The first attempt and retries_max re-runs (from failed, blocked or todo) go through; the next move into
    in_progress is refused with the LLM path's retry_limit, writes nothing, and goes through at 00:00 UTC."""
    clock = VirtualClock(T0)
    tasks = _tasks(clock, RetryPolicy(retries_max))
    _started(tasks)
    for i in range(retries_max):
        clock.advance(60)
        _rerun(tasks, RE_RUNS[i % len(RE_RUNS)])
    tasks.move("acme", "t1", TaskStatus.FAILED, by="writer")
    before = tasks.must("acme", "t1")
    with pytest.raises(TaskRefusedError) as refused:
        tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")
    verdict = refused.value.verdict
    midnight = datetime(2026, 11, 3, tzinfo=UTC)
    assert (verdict.code, verdict.detector) == (Code.RETRY_LIMIT, "retries_per_day")
    assert verdict.retry_after_s == (midnight - clock.now()).total_seconds()
    assert verdict.evidence["attempts"] == retries_max + 1
    assert tasks.must("acme", "t1") == before  # the refusal and the move are one write: nothing changed
    clock.set(midnight - timedelta(seconds=1))
    with pytest.raises(TaskRefusedError):
        tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")
    clock.set(midnight)  # a new UTC day: its first attempt
    moved = tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")
    assert moved.status is TaskStatus.IN_PROGRESS
    assert moved.attempts is not None and moved.attempts.day == "2026-11-03"
    assert len(moved.attempts.attempt_ids) == 1


def test_other_moves_and_other_tasks_do_not_count() -> None:
    """Heartbeats, blocking and failing count nothing; each task has its own count; [retries] off counts nothing."""
    clock = VirtualClock(T0)
    tasks = _tasks(clock, RetryPolicy(0))
    _started(tasks)
    for _ in range(5):
        tasks.heartbeat("acme", "t1", by="writer")
    tasks.create("acme", "t2", "another", by="lead", status=TaskStatus.TODO)
    tasks.assign("acme", "t2", "writer", by="lead")
    assert tasks.move("acme", "t2", TaskStatus.IN_PROGRESS, by="writer").status is TaskStatus.IN_PROGRESS
    tasks.move("acme", "t1", TaskStatus.BLOCKED, by="writer")
    with pytest.raises(TaskRefusedError):
        tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")
    off = _tasks(clock, None)
    _started(off)
    for out in RE_RUNS * 3:
        _rerun(off, out)
    assert off.must("acme", "t1").status is TaskStatus.IN_PROGRESS


def test_the_count_survives_a_new_service_on_the_same_ledger() -> None:
    """The count is in the task's row: a second service (another worker) on the same ledger refuses too."""
    clock = VirtualClock(T0)
    first = _tasks(clock, RetryPolicy(1))
    _started(first)
    _rerun(first, TaskStatus.FAILED)
    first.move("acme", "t1", TaskStatus.FAILED, by="writer")
    second = TaskService(first.store, clock, first.actions, SETTINGS, retries=RetryPolicy(1))
    with pytest.raises(TaskRefusedError):
        second.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")


def test_a_re_run_past_the_limit_over_http_answers_429_retry_limit(
        make_workers: Callable[[str, int], Workers]) -> None:
    """Through a gateway with [retries] retries_max_per_day = 1: the third start in one UTC day answers 429
    retry_limit with Retry-After to midnight, like a refused LLM call; the next day it starts."""
    workers = make_workers('[retries]\nretries_max_per_day = 1\n[tasks.chain]\nlead = ["writer"]\n', 1)
    lead, writer = workers.key(agent="lead"), workers.key(agent="writer")
    with httpx.Client(base_url=workers.urls[0], timeout=10) as c:
        def move(status: str) -> httpx.Response:
            return c.post("/v1/tasks/t1/move", json={"status": status}, headers={"Authorization": f"Bearer {writer}"})
        c.post("/v1/tasks", json={"id": "t1", "title": "digest", "status": "todo", "actions_min": 0},
               headers={"Authorization": f"Bearer {lead}"})
        c.post("/v1/tasks/t1/assign", json={"assignee": "writer"}, headers={"Authorization": f"Bearer {lead}"})
        for status in ("in_progress", "failed", "in_progress", "failed"):
            assert move(status).status_code == 200
        workers.clock.advance(3600)
        refused = move("in_progress")
        error = refused.json()["error"]
        assert (refused.status_code, error["code"], error["detector"]) == (429, "retry_limit", "retries_per_day")
        to_midnight = (datetime(2026, 11, 3, tzinfo=UTC) - workers.clock.now()).total_seconds()
        assert int(refused.headers["Retry-After"]) == to_midnight
        assert refused.headers["x-should-retry"] == "false"
        workers.clock.advance(to_midnight)
        assert move("in_progress").json()["task"]["status"] == "in_progress"


@settings(max_examples=60, deadline=None)
@given(retries_max=st.integers(0, 4),
       steps=st.lists(st.tuples(st.integers(0, 14_400), st.sampled_from(MOVES)), max_size=60))
def test_starts_per_utc_day_match_a_reference_count(retries_max: int, steps: list[tuple[int, TaskStatus]]) -> None:
    """Any sequence of moves and waits: a valid start is refused exactly when the reference count of the day's
    admitted starts has reached 1 + retries_max, and no UTC day admits more."""
    clock = VirtualClock(T0)
    tasks = _tasks(clock, RetryPolicy(retries_max))
    tasks.create("acme", "t1", "publish the digest", by="lead", status=TaskStatus.TODO, actions_min=0)
    tasks.assign("acme", "t1", "writer", by="lead")
    starts: dict[str, int] = {}
    for wait_s, to in steps:
        clock.advance(wait_s)
        day = clock.now().date().isoformat()
        try:
            moved = tasks.move("acme", "t1", to, by="writer")
        except TaskRefusedError:
            assert to is TaskStatus.IN_PROGRESS and starts.get(day, 0) == retries_max + 1
            continue
        except TaskError:
            continue  # a move the table does not allow (done is final, backlog cannot start...)
        if to is TaskStatus.IN_PROGRESS:
            assert starts.get(day, 0) < retries_max + 1
            starts[day] = starts.get(day, 0) + 1
        assert moved.status is to
    assert all(n <= retries_max + 1 for n in starts.values())
