"""A task's life: backlog -> todo -> in_progress -> (blocked) -> done | failed.

=============  ==================================================
from           to
=============  ==================================================
backlog        todo, failed
todo           in_progress, backlog, failed
in_progress    blocked, done, failed, todo
blocked        in_progress, failed
done, failed   (final)
=============  ==================================================

Moving to ``in_progress`` needs an assignee and counts as its first heartbeat. A task in
progress whose assignee has not sent a heartbeat within ``stale_s`` is stale. ``done`` needs
the task's verified actions: at least ``actions_min`` of them ``done``, and none that went ahead
still unconfirmed (``allowed``, ``approved``, ``unverified``): a post that Tumblr answered 200 for
and never published keeps its task open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from comptroller.domain.actions.model import ActionRecord, ActionStatus
from comptroller.domain.tasks.chain import ChainOfCommand

__all__ = ["Task", "TaskError", "TaskStatus"]

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
    TaskStatus.FAILED: frozenset(),
}
_UNCONFIRMED = frozenset({ActionStatus.ALLOWED, ActionStatus.APPROVED, ActionStatus.UNVERIFIED})


class TaskError(ValueError):
    """A move the task's state, the chain of command or its actions do not allow; the message says why."""


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
    updated_at: datetime | None = None
    version: int = 0

    def _next(self, now: datetime, **changes: Any) -> Task:
        return replace(self, updated_at=now, version=self.version + 1, **changes)

    def assign(self, assignee: str, now: datetime, *, by: str, chain: ChainOfCommand) -> Task:
        """Give the task to ``assignee``. Raises TaskError if ``by`` may not assign to it, or the task is final."""
        if self.status in (TaskStatus.DONE, TaskStatus.FAILED):
            raise TaskError(f"task {self.id!r} is {self.status}; a final task is not reassigned")
        if not chain.may_assign(by, assignee):
            below = ", ".join(sorted(chain.below(by))) or "nobody"
            raise TaskError(f"{by!r} may not assign work to {assignee!r} (the chain of command puts {below} "
                            f"below {by!r}); ask someone above {assignee!r}")
        return self._next(now, assignee=assignee, assigned_by=by)

    def move(self, to: TaskStatus, now: datetime, *, by: str, actions: Sequence[ActionRecord] = ()) -> Task:
        """Move to ``to``; ``actions`` are the task's actions (read now), needed to move to ``done``.

        Raises:
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
        return self._next(now, status=to, heartbeat_at=now if to is TaskStatus.IN_PROGRESS else self.heartbeat_at)

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
                "actions_min": self.actions_min, "updated_at": _iso(self.updated_at), "version": self.version}

    @classmethod
    def from_record(cls, r: Mapping[str, JsonScalar]) -> Task:
        """Parse :meth:`to_record`'s output."""
        return cls(tenant=str(r["tenant"]), id=str(r["id"]), title=str(r["title"]), status=TaskStatus(str(r["status"])),
                   created_by=str(r["created_by"]), created_at=datetime.fromisoformat(str(r["created_at"])),
                   assignee=_opt(r["assignee"]), assigned_by=_opt(r["assigned_by"]),
                   heartbeat_at=_opt_dt(r["heartbeat_at"]), actions_min=int(str(r["actions_min"])),
                   updated_at=_opt_dt(r["updated_at"]), version=int(str(r["version"])))


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _opt(value: JsonScalar) -> str | None:
    return None if value is None else str(value)


def _opt_dt(value: JsonScalar) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))
