"""``comptroller action list|approve|reject|verify|reverify``, ``task list|show``, ``simulate publisher``.

The action and task commands read and change the ledger's state rows through the same services the
gateway uses (:class:`~comptroller.engine.actions.ActionService`, :class:`~comptroller.engine.tasks.TaskService`),
with the policy's ``[actions]`` and ``[tasks]`` sections (``--config``).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from comptroller.actions_config import ActionsConfigError
from comptroller.cli.common import DbOption, console, user_errors
from comptroller.clock import SystemClock
from comptroller.config import ConfigError, load_policy
from comptroller.domain.actions import ActionStatus
from comptroller.engine.actions import ActionConflictError, ActionService, UnknownActionError
from comptroller.engine.tasks import TaskService
from comptroller.simulate.publisher import PLATFORMS, simulate_publisher
from comptroller.storage import StoreURLError, store_from_url

__all__ = ["register"]

action_app = typer.Typer(help="Guarded actions: list them, approve or reject held ones.", no_args_is_help=True)
task_app = typer.Typer(help="Tasks: list them, show one with its actions.", no_args_is_help=True)
ConfigOption = Annotated[str | None, typer.Option("--config", envvar="COMPTROLLER_CONFIG",
                                                  help="Policy file with [actions] and [tasks]")]
TenantOption = Annotated[str, typer.Option("--tenant", help="The tenant whose action or task it is")]
_ERRORS = (ConfigError, ActionsConfigError, StoreURLError, ActionConflictError, UnknownActionError, ValueError)


def register(app: typer.Typer, simulate_app: typer.Typer) -> None:
    """Add ``action`` and ``task`` to ``app`` and ``publisher`` to the ``simulate`` group."""
    app.add_typer(action_app, name="action")
    app.add_typer(task_app, name="task")
    simulate_app.command("publisher")(user_errors(ValueError)(publisher_command))


def _services(db: str, config: str | None) -> tuple[ActionService, TaskService]:
    policy = load_policy(config)
    store = store_from_url(db)
    actions = ActionService(store, SystemClock(), policy.action_policy())
    return actions, TaskService(store, SystemClock(), actions, policy.task_settings(),
                                retries=policy.defenses().retries)


@action_app.command("list")
@user_errors(*_ERRORS)
def action_list(db: DbOption = "sqlite:///comptroller.db", config: ConfigOption = None,
                tenant: Annotated[str | None, typer.Option("--tenant")] = None,
                status: Annotated[ActionStatus | None, typer.Option("--status")] = None) -> None:
    """Actions, oldest first (pending approvals with --status pending_approval)."""
    actions, _ = _services(db, config)
    table = Table("tenant", "id", "agent", "platform/kind", "task", "status", "reasons", "text")
    for r in actions.list(tenant, status):
        a = r.action
        table.add_row(a.tenant, a.id, a.agent, f"{a.platform}/{a.kind}", a.task or "", str(r.status),
                      ", ".join(x.code for x in r.reasons), a.text[:60])
    console.print(table)


@action_app.command("verify")
@user_errors(*_ERRORS)
def action_verify(action_id: str, tenant: TenantOption, db: DbOption = "sqlite:///comptroller.db",
                  config: ConfigOption = None) -> None:
    """Check an unverified action once now, whatever its schedule says (done, or counted and re-scheduled)."""
    actions, _ = _services(db, config)
    record = actions.check_once(tenant, action_id)
    console.print(f"action {action_id}: {record.status} after {record.verify_attempts} verification(s)")


@action_app.command("reverify")
@user_errors(*_ERRORS)
def action_reverify(db: DbOption = "sqlite:///comptroller.db", config: ConfigOption = None) -> None:
    """Check every unverified action whose re-check is due (one round of the schedule a gateway worker runs
    every second; for SDK-only deployments, from cron)."""
    actions, _ = _services(db, config)
    checked = actions.reverify_due()
    for record in checked:
        console.print(f"action {record.action.tenant}/{record.action.id}: {record.status} after "
                      f"{record.verify_attempts} verification(s)")
    console.print(f"{len(checked)} due action(s) checked")


def _decide(db: str, config: str | None, tenant: str, action_id: str, approve: bool, by: str) -> None:
    actions, _ = _services(db, config)
    record = actions.decide(tenant, action_id, approve=approve, by=by)
    reasons = "; ".join(r.message for r in record.reasons)
    console.print(f"action {action_id}: {record.status}" + (f" ({reasons})" if reasons else ""))


@action_app.command("approve")
@user_errors(*_ERRORS)
def action_approve(action_id: str, tenant: TenantOption, by: Annotated[str, typer.Option("--by")],
                   db: DbOption = "sqlite:///comptroller.db", config: ConfigOption = None) -> None:
    """Approve a held action (its rate and duplicate rules run again now)."""
    _decide(db, config, tenant, action_id, True, by)


@action_app.command("reject")
@user_errors(*_ERRORS)
def action_reject(action_id: str, tenant: TenantOption, by: Annotated[str, typer.Option("--by")],
                  db: DbOption = "sqlite:///comptroller.db", config: ConfigOption = None) -> None:
    """Reject a held action."""
    _decide(db, config, tenant, action_id, False, by)


@task_app.command("list")
@user_errors(*_ERRORS)
def task_list(db: DbOption = "sqlite:///comptroller.db", config: ConfigOption = None,
              tenant: Annotated[str | None, typer.Option("--tenant")] = None) -> None:
    """Tasks, oldest first, with staleness."""
    _, tasks = _services(db, config)
    now = tasks.clock.now()
    table = Table("tenant", "id", "title", "status", "assignee", "heartbeat", "stale")
    for t in tasks.tasks(tenant):
        stale = "yes" if t.stale(now, tasks.settings.stale_s) else ""
        table.add_row(t.tenant, t.id, t.title[:40], str(t.status), t.assignee or "",
                      t.heartbeat_at.isoformat() if t.heartbeat_at else "", stale)
    console.print(table)


@task_app.command("show")
@user_errors(*_ERRORS)
def task_show(task_id: str, tenant: TenantOption, db: DbOption = "sqlite:///comptroller.db",
              config: ConfigOption = None) -> None:
    """One task, its calls and spend, its task budgets (millicents) and its actions, as JSON."""
    actions, tasks = _services(db, config)
    namespace = load_policy(config).namespace
    task = tasks.must(tenant, task_id)
    now = tasks.clock.now()
    calls, cost_mc = tasks.spend(tenant, task_id)
    body = {"task": {**task.to_record(), "stale": task.stale(now, tasks.settings.stale_s)},
            "calls": calls, "cost_mc": cost_mc, "budgets": tasks.budgets(namespace, tenant, task_id),
            "actions": [a.to_json(now) for a in actions.list(tenant) if a.action.task == task_id]}
    console.print_json(json.dumps(body))


def publisher_command(days: Annotated[float, typer.Option("--days", min=0.1, max=90)] = 7,
                      heartbeat_s: Annotated[float, typer.Option("--heartbeat-s", min=60)] = 1800,
                      seed: Annotated[int, typer.Option("--seed")] = 0,
                      as_json: Annotated[bool, typer.Option("--json", help="Every refusal and its reasons")] = False,
                      ) -> None:
    """A heartbeat agent publishing to Write.as (1 per 12 h) and Tumblr (3 a day, 4 h apart), with and without
    the action guard, in virtual time."""
    result = simulate_publisher(days=days, heartbeat_s=heartbeat_s, seed=seed)
    if as_json:
        console.print_json(json.dumps({
            "without_guard": result.without_guard, "published": result.published,
            "refused": [{"id": i, "platform": p, "reasons": list(c)} for i, p, c in result.refused]}))
        return
    table = Table("platform", "drafts (= posts without the guard)", "posts with the guard", "refused",
                  title=f"publisher, {days:g} days, a heartbeat every {heartbeat_s:g} s (seed {seed})")
    for p in PLATFORMS:
        refused = sum(1 for _, q, _ in result.refused if q == p)
        table.add_row(p, str(result.without_guard[p]), str(result.published[p]), str(refused))
    console.print(table)
    why = Table("platform", "reason", "refusals", title="why (a draft refused for two reasons counts in both)")
    for (p, code), n in sorted(result.reasons.items()):
        why.add_row(p, code, str(n))
    console.print(why)
