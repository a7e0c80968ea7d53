"""``comptroller kill``, ``comptroller breaker`` and ``comptroller loop``: the admin side of the runtime defenses.

A kill switch refuses every call in its scope until an admin resets it; a breaker
opens by itself on a spend-rate runaway and can be reset by an admin; a loop lock
opens by itself when a loop is detected in a conversation (or an agent's calls)
and can be reset by an admin. All live in the ledger, so every process sharing it
sees the change at once.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.table import Table

from comptroller.cli.common import DEFAULT_DB, DbOption, console, user_errors
from comptroller.clock import SystemClock
from comptroller.config import scope_for
from comptroller.domain.defenses.errors import DefenseError
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import Level
from comptroller.engine.admin import Admin, ConcurrentChangeError
from comptroller.storage import StoreURLError, store_from_url

__all__ = ["register"]

kill_app = typer.Typer(help="Trip, reset and list kill switches.", no_args_is_help=True)
breaker_app = typer.Typer(help="List and reset spend-rate circuit breakers.", no_args_is_help=True)
loop_app = typer.Typer(help="List and reset loop locks (a detected loop locks its conversation or agent).",
                       no_args_is_help=True)
pin_app = typer.Typer(help="List and reset agents refused after a response served by a model outside their pin.",
                      no_args_is_help=True)
_errors = user_errors(DefenseError, StoreURLError, ConcurrentChangeError, ValueError)

LevelOption = Annotated[Level, typer.Option(help="Level of the scope")]
NamespaceOption = Annotated[str, typer.Option(help="Namespace id")]
TenantOption = Annotated[str | None, typer.Option(help="Tenant id")]
AgentOption = Annotated[str | None, typer.Option(help="Agent id")]
ConversationOption = Annotated[str | None, typer.Option(help="Conversation id")]
TaskOption = Annotated[str | None, typer.Option(help="Task id")]
ByOption = Annotated[str | None, typer.Option("--by", help="Who acts (default: the OS user)")]


def register(app: typer.Typer) -> None:
    """Add the ``kill``, ``breaker`` and ``loop`` command groups to ``app``."""
    app.add_typer(kill_app, name="kill")
    app.add_typer(breaker_app, name="breaker")
    app.add_typer(loop_app, name="loop")
    app.add_typer(pin_app, name="pin")


def _scope(level: Level, namespace: str, tenant: str | None, agent: str | None, conversation: str | None,
           task: str | None) -> str:
    scope = scope_for(level, namespace=namespace, tenant=tenant, agent=agent, conversation=conversation, task=task)
    if scope == "*":
        raise ValueError(f"a {level} kill switch or breaker needs the {level}'s id (--{level.replace('_', '-')})")
    return scope


@contextmanager
def _admin(db: str) -> Iterator[Admin]:
    """An admin over the ledger at ``db``, closed afterwards."""
    store = store_from_url(db)
    try:
        yield Admin(store, SystemClock())
    finally:
        store.close()


@kill_app.command("on")
@_errors
def kill_on(reason: Annotated[str, typer.Option(help="Why (shown in every refusal)")],
            level: LevelOption = Level.NAMESPACE, namespace: NamespaceOption = "replay", tenant: TenantOption = None,
            agent: AgentOption = None, conversation: ConversationOption = None, task: TaskOption = None,
            by: ByOption = None, db: DbOption = DEFAULT_DB) -> None:
    """Trip a kill switch: every call in the scope is refused (kill_switch) until `kill off`."""
    with _admin(db) as admin:
        state = admin.kill(level, _scope(level, namespace, tenant, agent, conversation, task),
                           by=by or getpass.getuser(), reason=reason)
    console.print(f"kill switch of {state.level} {state.scope!r} tripped by {state.by}: {state.reason}")


@kill_app.command("off")
@_errors
def kill_off(level: LevelOption = Level.NAMESPACE, namespace: NamespaceOption = "replay", tenant: TenantOption = None,
             agent: AgentOption = None, conversation: ConversationOption = None, task: TaskOption = None,
             by: ByOption = None, db: DbOption = DEFAULT_DB) -> None:
    """Reset a kill switch: calls are admitted again."""
    with _admin(db) as admin:
        state = admin.unkill(level, _scope(level, namespace, tenant, agent, conversation, task),
                             by=by or getpass.getuser())
    console.print(f"kill switch of {state.level} {state.scope!r} reset")


@kill_app.command("list")
@_errors
def kill_list(db: DbOption = DEFAULT_DB) -> None:
    """List kill switches (tripped now or before)."""
    with _admin(db) as admin:
        switches = admin.kill_switches()
    table = Table(title="Kill switches")
    for name in ("level", "scope", "tripped", "mode", "since", "by", "reason", "window spend"):
        table.add_column(name)
    for s in switches:
        table.add_row(str(s.level), s.scope, "yes" if s.tripped else "no", str(s.mode or "-"),
                      s.tripped_at.isoformat() if s.tripped_at else "-", s.by or "-", s.reason or "-",
                      format_usd(s.window_spend_mc))
    console.print(table)


@breaker_app.command("list")
@_errors
def breaker_list(db: DbOption = DEFAULT_DB) -> None:
    """List breakers with their state (closed, open, half-open), trips and cooldown end."""
    with _admin(db) as admin:
        breakers = admin.breakers()
    table = Table(title="Spend-rate breakers")
    for name in ("level", "scope", "status", "trips", "open until", "window spend", "over streak"):
        table.add_column(name)
    for b in breakers:
        table.add_row(str(b.level), b.scope, str(b.status), str(b.trips),
                      b.open_until.isoformat() if b.open_until else "-", format_usd(b.window_spend_mc),
                      str(b.over_streak))
    console.print(table)


@breaker_app.command("reset")
@_errors
def breaker_reset(level: LevelOption = Level.AGENT, namespace: NamespaceOption = "replay",
                  tenant: TenantOption = None, agent: AgentOption = None, conversation: ConversationOption = None,
                  by: ByOption = None, db: DbOption = DEFAULT_DB) -> None:
    """Close a breaker and reset its cooldown (an admin's decision after a trip)."""
    with _admin(db) as admin:
        state = admin.reset_breaker(level, _scope(level, namespace, tenant, agent, conversation, None),
                                    by=by or getpass.getuser())
    console.print(f"breaker of {state.level} {state.scope!r} is {state.status}")


@loop_app.command("list")
@_errors
def loop_list(db: DbOption = DEFAULT_DB) -> None:
    """List loop scopes with their lock (closed, open, half-open), trips and cooldown end."""
    with _admin(db) as admin:
        histories, now = admin.loops(), admin.clock.now()
    table = Table(title="Loop locks")
    for name in ("level", "scope", "lock", "trips", "locked by", "agent", "open until", "families"):
        table.add_column(name)
    for h in histories:
        lock = h.lock
        table.add_row(str(h.level), h.scope, str(lock.status(now)), str(lock.trips), lock.detector or "-",
                      lock.agent or "-", lock.open_until.isoformat() if lock.open_until else "-",
                      str(len(h.entries)))
    console.print(table)


@loop_app.command("reset")
@_errors
def loop_reset(level: Annotated[Level, typer.Option(help="conversation, or agent for calls without one")]
               = Level.CONVERSATION, namespace: NamespaceOption = "replay", tenant: TenantOption = None,
               agent: AgentOption = None, conversation: ConversationOption = None,
               by: ByOption = None, db: DbOption = DEFAULT_DB) -> None:
    """Close a loop lock, forget its trips and clear the scope's loop history (after fixing the loop)."""
    with _admin(db) as admin:
        history = admin.reset_loop(level, _scope(level, namespace, tenant, agent, conversation, None),
                                   by=by or getpass.getuser())
    console.print(f"loop lock of {history.level} {history.scope!r} is {history.lock.status(admin.clock.now())}")


@pin_app.command("list")
@_errors
def pin_list(db: DbOption = DEFAULT_DB) -> None:
    """List agents whose calls were served by a model outside their pin (refused until reset)."""
    with _admin(db) as admin:
        drifts = admin.served_drifts()
    table = Table(title="Served-model drift (model pinning)")
    for name in ("agent scope", "refused", "served model", "admitted model", "reservation", "at"):
        table.add_column(name)
    for d in drifts:
        table.add_row(d.scope, "yes" if d.drifted else "no (reset)", d.served_model or "-", d.admitted_model or "-",
                      d.reservation or "-", d.at.isoformat() if d.at else "-")
    console.print(table)


@pin_app.command("reset")
@_errors
def pin_reset(scope: Annotated[str, typer.Option(help="The agent's scope key, as the refusal names it")],
              by: ByOption = None, db: DbOption = DEFAULT_DB) -> None:
    """Let an agent call again after a response served by a model outside its pin (its refusal names the scope)."""
    with _admin(db) as admin:
        drift = admin.reset_served_drift(scope, by=by or getpass.getuser())
    console.print(f"agent {drift.scope!r} may call again (served-model drift reset)")
