"""Tasks: the lifecycle table, the chain of command, stale heartbeats in virtual time, done only when verified."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from actions_kit import TUMBLR, StubPlatform

from comptroller.actions_config import TaskSettings, parse_actions
from comptroller.bootstrap import build_engine
from comptroller.clock import VirtualClock
from comptroller.config import Policy
from comptroller.domain.actions import Action, ActionStatus
from comptroller.domain.budgets import Budget
from comptroller.domain.scopes import Attribution, Level, scope_key
from comptroller.domain.tasks import TaskError, TaskStatus
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest
from comptroller.engine.actions import ActionService
from comptroller.engine.tasks import TaskService
from comptroller.storage import store_from_url

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
STALE_S = 1800
CHAIN = {"lead": ["writer", "publisher"], "writer": ["researcher"]}


def _services(actions: dict[str, object], clock: VirtualClock) -> tuple[ActionService, TaskService]:
    store = store_from_url("memory://")
    guard = ActionService(store, clock, parse_actions(actions), sleep=clock.advance)
    return guard, TaskService(store, clock, guard, TaskSettings(stale_s=STALE_S, chain=CHAIN))


def test_the_chain_of_command_decides_who_assigns_to_whom() -> None:
    """The lead assigns to anyone below it (transitively); a writer cannot assign to the lead or a peer."""
    _, tasks = _services({}, VirtualClock(T0))
    tasks.create("acme", "t1", "weekly digest", by="lead")
    assert tasks.assign("acme", "t1", "researcher", by="lead").assignee == "researcher"
    assert tasks.assign("acme", "t1", "researcher", by="writer").assigned_by == "writer"
    for assigner, assignee in [("writer", "lead"), ("writer", "publisher"), ("researcher", "writer")]:
        with pytest.raises(TaskError, match="may not assign"):
            tasks.assign("acme", "t1", assignee, by=assigner)


def test_moves_follow_the_table() -> None:
    """backlog cannot jump to done; in_progress needs an assignee; a final task never moves again."""
    _, tasks = _services({}, VirtualClock(T0))
    tasks.create("acme", "t1", "post", by="lead", actions_min=0)
    with pytest.raises(TaskError, match="can move to"):
        tasks.move("acme", "t1", TaskStatus.DONE, by="lead")
    tasks.move("acme", "t1", TaskStatus.TODO, by="lead")
    with pytest.raises(TaskError, match="no assignee"):
        tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="lead")
    tasks.assign("acme", "t1", "writer", by="lead")
    for to in (TaskStatus.IN_PROGRESS, TaskStatus.BLOCKED, TaskStatus.IN_PROGRESS, TaskStatus.DONE):
        assert tasks.move("acme", "t1", to, by="writer").status is to
    with pytest.raises(TaskError, match="final"):
        tasks.move("acme", "t1", TaskStatus.TODO, by="writer")


def test_a_stale_heartbeat_is_detected_in_virtual_time() -> None:
    """In progress with no heartbeat for stale_s is stale; a heartbeat makes it fresh; only the assignee beats."""
    clock = VirtualClock(T0)
    _, tasks = _services({}, clock)
    tasks.create("acme", "t1", "post", by="lead", status=TaskStatus.TODO)
    tasks.assign("acme", "t1", "writer", by="lead")
    tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")
    clock.advance(STALE_S - 1)
    assert tasks.stale("acme") == []
    tasks.heartbeat("acme", "t1", by="writer")
    clock.advance(STALE_S - 1)
    assert tasks.stale("acme") == []
    clock.advance(1)
    assert [t.id for t in tasks.stale("acme")] == ["t1"]
    with pytest.raises(TaskError):
        tasks.heartbeat("acme", "t1", by="publisher")


def test_a_task_is_not_done_without_its_verified_actions() -> None:
    """A task whose post was answered 200 and never published stays open; a verified post lets it close."""
    clock = VirtualClock(T0)
    with StubPlatform(publishes=False) as liar, StubPlatform(publishes=True) as honest:
        guard, tasks = _services({"tumblr": {**TUMBLR, "verify_url": "{url}", "verify_attempts": 2}}, clock)
        tasks.create("acme", "t1", "publish the digest", by="lead", status=TaskStatus.TODO)
        tasks.assign("acme", "t1", "writer", by="lead")
        tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")
        with pytest.raises(TaskError, match="needs 1 verified"):
            tasks.move("acme", "t1", TaskStatus.DONE, by="writer")
        text = "Weekly digest: budgets per tenant, circuit breakers on spend. Read it and subscribe."
        guard.check(Action("p1", "acme", "writer", "tumblr", "post", text, task="t1"))
        guard.record_outcome("acme", "p1", published=True, url=liar.url)
        assert guard.verify("acme", "p1").status is ActionStatus.UNVERIFIED
        with pytest.raises(TaskError, match="not yet verified"):
            tasks.move("acme", "t1", TaskStatus.DONE, by="writer")
        guard.record_outcome("acme", "p1", published=True, url=liar.url)  # a repeat changes nothing
        clock.advance(TUMBLR["gap_s"])
        guard.check(Action("p2", "acme", "writer", "tumblr", "post", "A different post: pacing monthly spend. "
                           "Follow for more.", task="t2"))
        honest.publish("A different post: pacing monthly spend. Follow for more.")
        guard.record_outcome("acme", "p2", published=True, url=honest.url)
        assert guard.verify("acme", "p2").status is ActionStatus.DONE
        with pytest.raises(TaskError, match="not yet verified"):  # p2 serves t2, not t1: p1 still open
            tasks.move("acme", "t1", TaskStatus.DONE, by="writer")
        liar.publishes = True
        liar.publish(text)
        assert guard.verify("acme", "p1").status is ActionStatus.DONE
        assert tasks.move("acme", "t1", TaskStatus.DONE, by="writer").status is TaskStatus.DONE


def test_a_task_shows_its_calls_spend_and_budget() -> None:
    """The task's settled calls and cost come from the usage log, only those attributed to it (and its tenant);
    its budget shows the limit and what its account settled: its own budget for t1, the "*" default for t2."""
    clock = VirtualClock(T0)
    engine = build_engine(db_url="memory://", policy=Policy(namespace="prod"), clock=clock, sinks=[])
    guard = ActionService(engine.store, clock, parse_actions({}))
    tasks = TaskService(engine.store, clock, guard, TaskSettings())
    engine.store.put_budget(Budget(Level.TASK, scope_key("prod", "acme", "t1"), 500_000))
    engine.store.put_budget(Budget(Level.TASK, "*", 100_000))
    costs = []
    for tenant, task in [("acme", "t1"), ("acme", "t1"), ("acme", "t2"), ("globex", "t1")]:
        call = CallRequest(attribution=Attribution(namespace="prod", tenant=tenant, agent="writer", task=task),
                           model="gpt-4o-mini", input_tokens_max=100, max_tokens=10)
        admission = engine.admit(call)
        assert admission.reservation is not None
        settled = engine.settle(admission.reservation, Usage(input_tokens=80, output_tokens=5))
        assert settled.record is not None
        if (tenant, task) == ("acme", "t1"):
            costs.append(settled.record.cost_mc)
    assert tasks.spend("acme", "t1") == (2, sum(costs))
    assert sum(costs) > 0
    [own] = tasks.budgets("prod", "acme", "t1")
    assert (own["scope"], own["limit_mc"], own["settled_mc"], own["reserved_mc"], own["remaining_mc"]) == (
        scope_key("prod", "acme", "t1"), 500_000, sum(costs), 0, 500_000 - sum(costs))
    [default] = tasks.budgets("prod", "acme", "t2")
    assert (default["scope"], default["limit_mc"], default["settled_mc"]) == ("*", 100_000, sum(costs) // 2)
    [unused] = tasks.budgets("prod", "acme", "t9")
    assert (unused["settled_mc"], unused["period_key"]) == (0, None)
