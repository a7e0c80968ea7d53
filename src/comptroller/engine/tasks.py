"""The task service: create, assign, move, heartbeat and find stale tasks, on the ledger's state rows.

Each task is the row ``("task", "tenant|id")``, changed by compare-and-set (read, apply the pure
transition of :mod:`comptroller.domain.tasks`, write back iff the version is unchanged, else read
again), so workers and replicas agree. ``done`` reads the task's actions from the action guard
(:class:`~comptroller.engine.actions.ActionService`) at the moment of the move.

Every move into ``in_progress`` is an attempt counted by defense layer 2 (``[retries]
retries_max_per_day``, 3 re-attempts per UTC day by default): the count is a field of the task's
row, so the move and its count are one compare-and-set, and a move past the limit raises
:class:`~comptroller.domain.tasks.TaskRefusedError` (``retry_limit``) with nothing written.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from comptroller.actions_config import TaskSettings
from comptroller.domain.defenses.retries import RetryPolicy
from comptroller.domain.scopes import Level, scope_key
from comptroller.domain.state import StateKey, StoredState
from comptroller.domain.tasks import ChainOfCommand, Task, TaskError, TaskStatus
from comptroller.engine.actions import ActionService, UnknownActionError
from comptroller.ports import Clock, LedgerStore

__all__ = ["TASK", "TaskService"]

TASK = "task"
"""The state kind of a task's row."""
_ATTEMPTS = 64
_RETRIES = RetryPolicy()


class TaskService:
    """Tasks on one ledger.

    Args:
        store: the ledger.
        clock: the time source (UTC).
        actions: the action guard (a task is done only with its verified actions).
        settings: ``[tasks]``: stale_s and the chain of command.
        retries: defense layer 2's limit on a task's attempts per UTC day (the policy's ``[retries]``,
            ``Policy.defenses().retries``; default 3 re-attempts; None only when ``[retries] enabled = false``).
    """

    def __init__(self, store: LedgerStore, clock: Clock, actions: ActionService,
                 settings: TaskSettings | None = None, *, retries: RetryPolicy | None = _RETRIES) -> None:
        self.store, self.clock, self.actions = store, clock, actions
        self.settings = settings or TaskSettings()
        self.retries = retries
        self.chain = ChainOfCommand({k: tuple(v) for k, v in self.settings.chain.items()})

    def create(self, tenant: str, task_id: str, title: str, *, by: str, actions_min: int = 1,
               status: TaskStatus = TaskStatus.BACKLOG) -> Task:
        """Create a task in ``backlog`` (or ``todo``); creating an existing id answers the stored task.

        Raises:
            TaskError: a start status other than backlog or todo, or a negative ``actions_min``.
        """
        if status not in (TaskStatus.BACKLOG, TaskStatus.TODO):
            raise TaskError(f"a task starts in backlog or todo, not {status}")
        if actions_min < 0:
            raise TaskError(f"actions_min must be >= 0, got {actions_min}")
        now = self.clock.now()
        task = Task(tenant, task_id, title, status, by, now, actions_min=actions_min, updated_at=now, version=1)
        self.store.put_state(StoredState(_key(tenant, task_id), 1, task.to_record()), 0)
        return self.must(tenant, task_id)

    def get(self, tenant: str, task_id: str) -> Task | None:
        """One task, or None."""
        stored = self.store.state(_key(tenant, task_id))
        return None if stored is None else Task.from_record(stored.record)

    def must(self, tenant: str, task_id: str) -> Task:
        """One task. Raises UnknownActionError (a LookupError) if there is none."""
        task = self.get(tenant, task_id)
        if task is None:
            raise UnknownActionError(f"no task {task_id!r} for tenant {tenant!r}; `comptroller task list` shows them")
        return task

    def tasks(self, tenant: str | None = None) -> list[Task]:
        """Tasks (of one tenant), oldest first."""
        tasks = [Task.from_record(s.record) for s in self.store.states(TASK)]
        return sorted((t for t in tasks if tenant is None or t.tenant == tenant), key=lambda t: (t.created_at, t.id))

    def assign(self, tenant: str, task_id: str, assignee: str, *, by: str) -> Task:
        """Assign under the chain of command. Raises TaskError, UnknownActionError."""
        return self._update(tenant, task_id, lambda t, now: t.assign(assignee, now, by=by, chain=self.chain))

    def move(self, tenant: str, task_id: str, to: TaskStatus, *, by: str) -> Task:
        """Move a task; ``done`` checks its verified actions, ``in_progress`` counts an attempt.

        Raises:
            TaskRefusedError: ``in_progress`` past the day's attempts (``retry_limit``; nothing written).
            TaskError: a move the task's table, owner or actions do not allow.
            UnknownActionError: no such task.
        """
        def step(task: Task, now: datetime) -> Task:
            done = to is TaskStatus.DONE
            actions = [a for a in self.actions.list(tenant) if a.action.task == task_id] if done else []
            return task.move(to, now, by=by, actions=actions, retries=self.retries)
        return self._update(tenant, task_id, step)

    def heartbeat(self, tenant: str, task_id: str, *, by: str) -> Task:
        """The assignee's heartbeat. Raises TaskError, UnknownActionError."""
        return self._update(tenant, task_id, lambda t, now: t.heartbeat(now, by=by))

    def spend(self, tenant: str, task_id: str) -> tuple[int, int]:
        """The task's settled calls and their cost in millicents, from the usage log (calls attributed to it
        through ``X-Comptroller-Task`` or the SDK's ``task=``); a scan of the log, for one view, not a hot path."""
        calls = cost_mc = 0
        for record in self.store.usage_records():
            if record.attribution.tenant == tenant and record.attribution.task == task_id:
                calls += 1
                cost_mc += record.cost_mc
        return calls, cost_mc

    def budgets(self, namespace: str, tenant: str, task_id: str) -> list[dict[str, str | int | None]]:
        """The task-level budgets that apply to the task (its own, else the ``scope = "*"`` default, as the
        ledger applies them) with their latest period's account: limit, settled, reserved and remaining
        millicents (zeros before the first call of the period). For one view, not a hot path.
        """
        key = scope_key(namespace, tenant, task_id)
        defined = [b for b in self.store.budgets() if b.level is Level.TASK and b.scope in (key, "*")]
        applying = [b for b in defined if b.scope == key] or defined
        accounts = sorted((a for a in self.store.accounts() if a.budget.level is Level.TASK and a.scope == key),
                          key=lambda a: a.period_key)
        out: list[dict[str, str | int | None]] = []
        for budget in applying:
            mine = [a for a in accounts if (a.budget.period, a.budget.limit_mc) == (budget.period, budget.limit_mc)]
            settled_mc, reserved_mc = (mine[-1].settled_mc, mine[-1].reserved_mc) if mine else (0, 0)
            out.append({"scope": budget.scope, "period": str(budget.period),
                        "period_key": mine[-1].period_key if mine else None, "limit_mc": budget.limit_mc,
                        "settled_mc": settled_mc, "reserved_mc": reserved_mc,
                        "remaining_mc": budget.limit_mc - settled_mc - reserved_mc})
        return out

    def stale(self, tenant: str | None = None) -> list[Task]:
        """Tasks in progress whose assignee missed its heartbeat for ``stale_s`` (read now)."""
        now = self.clock.now()
        return [t for t in self.tasks(tenant) if t.stale(now, self.settings.stale_s)]

    def _update(self, tenant: str, task_id: str, step: Callable[[Task, datetime], Task]) -> Task:
        for _ in range(_ATTEMPTS):
            current = self.must(tenant, task_id)
            nxt = step(current, self.clock.now())
            if self.store.put_state(StoredState(_key(tenant, task_id), nxt.version, nxt.to_record()), current.version):
                return nxt
        raise TaskError(f"task {task_id!r} kept changing; retry")


def _key(tenant: str, task_id: str) -> StateKey:
    return StateKey(TASK, f"{tenant}|{task_id}")
