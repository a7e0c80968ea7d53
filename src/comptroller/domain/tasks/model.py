"""A task's life: backlog -> todo -> in_progress -> (blocked) -> done | failed.

=============  ==================================================
from           to
=============  ==================================================
backlog        todo, failed
todo           in_progress, backlog, failed
in_progress    blocked, done, failed, todo
blocked        in_progress, failed
failed         in_progress, todo (a re-attempt)
done           (final)
=============  ==================================================

Moving to ``in_progress`` needs an assignee and counts as its first heartbeat. Every move into
``in_progress`` is an attempt of the task, counted by defense layer 2
(:func:`comptroller.domain.defenses.retries.check_attempt`, "at most 3 re-attempts of a task per
day", Multi-Agent Mesh Economics): the first attempt of a UTC day and ``retries_max_per_day``
re-attempts go through, the next is refused with ``retry_limit`` (:class:`TaskRefusedError`) until
00:00 UTC. The count lives in the task's own row (``attempts``), so it is written in the same
compare-and-set as the move it counts: a refused move changes nothing, an admitted one counts once. A task in
progress whose assignee has not sent a heartbeat within ``stale_s`` is stale. ``done`` needs
the task's verified actions: at least ``actions_min`` of them ``done``, and none that went ahead
still unconfirmed (``allowed``, ``approved``, ``unverified``): a post that Tumblr answered 200 for
and never published keeps its task open.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from comptroller.domain.actions.model import ActionRecord, ActionStatus
from comptroller.domain.defenses.retries import RetryPolicy, RetryState, check_attempt
from comptroller.domain.defenses.verdict import Verdict
from comptroller.domain.tasks.chain import ChainOfCommand

__all__ = ["Task", "TaskError", "TaskRefusedError", "TaskStatus"]

JsonScalar = str | int | float | bool | None


class TaskStatus(StrEnum):
    """Where a task is (see the module's table)."""

    BACKLOG = "backlog"
    TODO = "todo"
    IN_PROGRESS = "in_progress"
    BLOCKED = "blocked"
    DONE = "done"
    FAILED = "failed"


_MOVES: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.BACKLOG: frozenset({TaskStatus.TODO, TaskStatus.FAILED}),
    TaskStatus.TODO: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.BACKLOG, TaskStatus.FAILED}),
    TaskStatus.IN_PROGRESS: frozenset({TaskStatus.BLOCKED, TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.TODO}),
    TaskStatus.BLOCKED: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.FAILED}),
    TaskStatus.DONE: frozenset(),
    TaskStatus.FAILED: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.TODO}),
}
_UNCONFIRMED = frozenset({ActionStatus.ALLOWED, ActionStatus.APPROVED, ActionStatus.UNVERIFIED})


class TaskError(ValueError):
    """A move the task's state, the chain of command or its actions do not allow; the message says why."""


class TaskRefusedError(TaskError):
    """A move into ``in_progress`` past the re-attempt limit of defense layer 2.

    Attributes:
        verdict: the layer's refusal: code ``retry_limit`` (the code the LLM path answers), detector
            ``retries_per_day``, ``retry_after_s`` to the next 00:00 UTC, and the day's attempts as evidence.
    """

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


@dataclass(frozen=True, slots=True)
class Task:
    """One task (state row ``("task", "tenant|id")``).

    Attributes:
        tenant: whose task.
        id: its id within the tenant.
        title: what it is.
        status: where it is.
        created_by: the agent (or person) that created it.
        created_at: when.
        assignee: who works on it, if assigned.
        assigned_by: who assigned it.
        heartbeat_at: the assignee's last heartbeat.
        actions_min: verified actions needed for ``done`` (0: none needed).
        attempts: the day's attempts (moves into ``in_progress``) as defense layer 2 counts them, or None
            before the first.
        updated_at: the last change.
        version: the compare-and-set token.
    """

    tenant: str
    id: str
    title: str
    status: TaskStatus
    created_by: str
    created_at: datetime
    assignee: str | None = None
    assigned_by: str | None = None
    heartbeat_at: datetime | None = None
    actions_min: int = 1
    attempts: RetryState | None = None
    updated_at: datetime | None = None
    version: int = 0

    def _next(self, now: datetime, **changes: Any) -> Task:
        return replace(self, updated_at=now, version=self.version + 1, **changes)

    def assign(self, assignee: str, now: datetime, *, by: str, chain: ChainOfCommand) -> Task:
        """Give the task to ``assignee``. Raises TaskError if ``by`` may not assign to it, or the task is done."""
        if self.status is TaskStatus.DONE:
            raise TaskError(f"task {self.id!r} is done; a final task is not reassigned")
        if not chain.may_assign(by, assignee):
            below = ", ".join(sorted(chain.below(by))) or "nobody"
            raise TaskError(f"{by!r} may not assign work to {assignee!r} (the chain of command puts {below} "
                            f"below {by!r}); ask someone above {assignee!r}")
        return self._next(now, assignee=assignee, assigned_by=by)

    def move(self, to: TaskStatus, now: datetime, *, by: str, actions: Sequence[ActionRecord] = (),
             retries: RetryPolicy | None = None) -> Task:
        """Move to ``to``; ``actions`` are the task's actions (read now), needed to move to ``done``.

        Args:
            to: the next status.
            now: the time of the move (aware UTC).
            by: who moves it (the assignee or whoever assigned it).
            actions: the task's actions as read now (for ``done``).
            retries: defense layer 2's limit on attempts (moves into ``in_progress``) per UTC day;
                None counts nothing (``[retries] enabled = false``).

        Raises:
            TaskRefusedError: a move into ``in_progress`` past the day's attempts (``retry_limit``).
            TaskError: a move the table does not allow, ``in_progress`` without an assignee, a move by
                anyone but the assignee once assigned, or ``done`` without its verified actions.
        """
        if to not in _MOVES[self.status]:
            allowed = ", ".join(sorted(_MOVES[self.status])) or "nothing (it is final)"
            raise TaskError(f"task {self.id!r} is {self.status}; it can move to {allowed}, not {to}")
        if to is TaskStatus.IN_PROGRESS and self.assignee is None:
            raise TaskError(f"task {self.id!r} has no assignee; assign it before starting it")
        if self.assignee is not None and by not in (self.assignee, self.assigned_by):
            raise TaskError(f"task {self.id!r} belongs to {self.assignee!r}; only it or {self.assigned_by!r} moves it")
        if to is TaskStatus.DONE:
            self._check_verified(actions)
        attempts = self.attempts
        if to is TaskStatus.IN_PROGRESS and retries is not None:
            attempts = self._attempt(retries, now)
        return self._next(now, status=to, heartbeat_at=now if to is TaskStatus.IN_PROGRESS else self.heartbeat_at,
                          attempts=attempts)

    def _attempt(self, retries: RetryPolicy, now: datetime) -> RetryState:
        # the attempt id is the version the move starts from: one id per move, so a move retried after a
        # lost compare-and-set (a new version read) is counted once, by the write that lands
        state = self.attempts or RetryState(f"{self.tenant}|{self.id}")
        step = check_attempt(state, retries, f"move-v{self.version}", now)
        if step.verdict is not None:
            raise TaskRefusedError(step.verdict)
        return step.state

    def _check_verified(self, actions: Sequence[ActionRecord]) -> None:
        mine = [a for a in actions if a.action.task == self.id]
        open_ = [a.action.id for a in mine if a.status in _UNCONFIRMED]
        done = [a for a in mine if a.status is ActionStatus.DONE]
        if open_:
            raise TaskError(f"task {self.id!r} has actions not yet verified ({', '.join(open_)}); it is done when "
                            "a verifier confirms them")
        if len(done) < self.actions_min:
            raise TaskError(f"task {self.id!r} needs {self.actions_min} verified action(s) to be done and has "
                            f"{len(done)}")

    def heartbeat(self, now: datetime, *, by: str) -> Task:
        """Record the assignee's heartbeat. Raises TaskError if ``by`` is not the assignee."""
        if by != self.assignee:
            raise TaskError(f"task {self.id!r} is assigned to {self.assignee!r}; {by!r} cannot beat for it")
        return self._next(now, heartbeat_at=now)

    def stale(self, now: datetime, stale_s: float) -> bool:
        """True if in progress and no heartbeat for ``stale_s`` seconds or more."""
        return (self.status is TaskStatus.IN_PROGRESS and self.heartbeat_at is not None
                and now - self.heartbeat_at >= timedelta(seconds=stale_s))

    def to_record(self) -> dict[str, JsonScalar]:
        """The flat JSON record of the state row."""
        return {"tenant": self.tenant, "id": self.id, "title": self.title, "status": str(self.status),
                "created_by": self.created_by, "created_at": self.created_at.isoformat(), "assignee": self.assignee,
                "assigned_by": self.assigned_by, "heartbeat_at": _iso(self.heartbeat_at),
                "actions_min": self.actions_min, "updated_at": _iso(self.updated_at), "version": self.version,
                "attempts": None if self.attempts is None else json.dumps(self.attempts.to_record())}

    @classmethod
    def from_record(cls, r: Mapping[str, JsonScalar]) -> Task:
        """Parse :meth:`to_record`'s output."""
        return cls(tenant=str(r["tenant"]), id=str(r["id"]), title=str(r["title"]), status=TaskStatus(str(r["status"])),
                   created_by=str(r["created_by"]), created_at=datetime.fromisoformat(str(r["created_at"])),
                   assignee=_opt(r["assignee"]), assigned_by=_opt(r["assigned_by"]),
                   heartbeat_at=_opt_dt(r["heartbeat_at"]), actions_min=int(str(r["actions_min"])),
                   updated_at=_opt_dt(r["updated_at"]), version=int(str(r["version"])),
                   attempts=_opt_attempts(r.get("attempts")))


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _opt(value: JsonScalar) -> str | None:
    return None if value is None else str(value)


def _opt_attempts(value: JsonScalar) -> RetryState | None:
    return None if value is None else RetryState.from_record(json.loads(str(value)))


def _opt_dt(value: JsonScalar) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))
