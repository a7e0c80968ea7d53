"""The admin API (mounted at ``/admin``; OpenAPI document at ``/admin/openapi.json``).

=========================================  ======  ==============================================
route                                      who     what
=========================================  ======  ==============================================
``GET /budgets``                           both    accounts: limit, settled, reserved, remaining
``GET /budgets/idle``                      both    budgets that matched no call this period, and why
``PUT /budgets``                           admin   create or replace a budget
``DELETE /budgets/{budget_id}``            admin   delete a budget (its accounts stay)
``GET /usage?by=&from=&to=&tenant=``       both    settled calls, tokens and cost per tenant, agent,
                                                   key, conversation, task or model, over a range
``GET /usage.csv?by=&from=&to=&tenant=``   both    the same rows as ``comptroller report --by --csv``
``GET /report?from=&to=``                  admin   the report ``comptroller report --json`` prints
``GET /pnl?by=&period=&from=&to=``         both    P&L per agent or tenant (the wallet transfers)
``GET /keys`` / ``POST /keys``             both /  list keys (never secrets) / create one (the key
                                           admin   is in the answer, once)
``DELETE /keys/{key_id}``                  admin   revoke a key
``GET /breakers``                          admin   every spend-rate breaker's state
``POST /breakers/reset``                   admin   close a breaker
``GET /loops``, ``POST /loops/reset``      admin   loop locks; close one and clear its history
``GET /kill-switches``                     admin   every kill switch
``POST /kill-switches/trip`` / ``reset``   admin   trip or reset a kill switch
``GET /groups`` / ``GET /groups/{id}``     both    group chats: members, roles, tenants, budget left
``PUT /groups/{group_id}``                 admin   create or replace a group (its ``[groups.NAME]``
                                                   table as JSON; the room's history is kept)
``DELETE /groups/{group_id}``              admin   remove a group and its room (spend stays)
=========================================  ======  ==============================================

Authentication is the bearer key: an admin key may do everything; a tenant key only
reads its own tenant (budgets of its tenant, agents, agent-conversations, conversations
and tasks, its usage and keys, and the groups one of its agents is a member of). Asking
for another tenant is 403 (another tenant's group is 404); namespace-wide budgets (the
namespace, a shared group's conversation) are admin-only. ``PUT /budgets`` names every id
above the level's own (a budget that could match no call is a 400 naming the missing ids;
see :func:`comptroller.domain.budgets.budget_scope`; the namespace is the gateway's).
Errors use the gateway's OpenAI-style body.

``from`` (inclusive) and ``to`` (exclusive) are ISO dates or times, UTC unless they name a zone,
and select calls by settle time (:mod:`comptroller.reports.chargeback`); a tenant key's usage and
P&L are its tenant's rows only. ``/usage`` rows have the columns of ``comptroller report --by``'s
CSV (``group`` is ``key`` here; ``group_by`` is the older name of ``by``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import JsonValue, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from comptroller.domain.budgets import Budget, BudgetError, Period, budget_scope
from comptroller.domain.defenses.errors import DefenseConfigError, UnknownScopeError
from comptroller.domain.defenses.loop_history import LoopHistory
from comptroller.domain.dispatch import Flag, GroupError
from comptroller.domain.ledger import AccountView
from comptroller.domain.reconcile import idle_budgets
from comptroller.domain.scopes import Level, scope_key
from comptroller.domain.wallets.pnl import PnlBy
from comptroller.engine import Engine
from comptroller.engine.admin import Admin, ConcurrentChangeError
from comptroller.gateway.admin_models import (
    ERROR_RESPONSES,
    GROUP_EXAMPLE,
    AccountOut,
    BudgetIn,
    BudgetOut,
    GroupOut,
    IdleBudgetOut,
    KeyIn,
    KeyOut,
    KillIn,
    MemberOut,
    ScopeIn,
    UsageOut,
    UsageRow,
)
from comptroller.gateway.errors import GatewayError, error_response
from comptroller.gateway.groups import visible_to
from comptroller.gateway.identity import Caller, Identity
from comptroller.groups import GroupDefinition, GroupService, UnknownGroupError
from comptroller.reports.chargeback import ChargebackBy, TimeRange, chargeback_csv, chargeback_rows, parse_instant
from comptroller.reports.ledger import ledger_report
from comptroller.reports.pnl import pnl_document
from comptroller.storage.keys import ApiKey, ApiKeyError, KeyStore, new_key
from comptroller.storage.transfers import TransferStore
from comptroller.ui.swagger import docs_routes

__all__ = ["admin_app"]

_TENANT_LEVELS = (Level.TENANT, Level.AGENT, Level.AGENT_CONVERSATION, Level.CONVERSATION, Level.TASK)



def _forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, type_="permission_error", code="admin_only")


def _key_out(key: ApiKey, plaintext: str | None = None) -> KeyOut:
    return KeyOut(id=key.id, tenant=key.tenant, agent=key.agent, name=key.name, admin=key.admin,
                  models=None if key.models is None else list(key.models), created_at=key.created_at,
                  revoked_at=key.revoked_at, key=plaintext)


def _in_tenant(account: AccountView, namespace: str, tenant: str) -> bool:
    return _scope_in_tenant(account.budget.level, account.scope, namespace, tenant)


def _scope_in_tenant(level: Level, scope: str, namespace: str, tenant: str) -> bool:
    if level not in _TENANT_LEVELS:
        return False
    own = scope_key(namespace, tenant)
    if level is Level.TENANT:
        return scope == own
    return scope.startswith(own + "|")  # a shared group's conversation (ns|group) is not the tenant's


@dataclass(frozen=True)
class _Context:
    engine: Engine
    keys: KeyStore
    identity: Identity
    namespace: str
    ops: Admin
    groups: GroupService
    transfers: TransferStore | None = None
    margin_floor: Decimal | None = None


def _context(request: Request) -> _Context:
    context: _Context = request.app.state.admin
    return context


Ctx = Annotated[_Context, Depends(_context)]


def _caller(request: Request, ctx: Ctx) -> Caller:
    return ctx.identity.authenticate(request.headers)


def _admin(caller: Annotated[Caller, Depends(_caller)]) -> Caller:
    if not caller.admin:
        raise _forbidden("this needs an admin key")
    return caller


AnyCaller = Annotated[Caller, Depends(_caller)]
AdminCaller = Annotated[Caller, Depends(_admin)]


def _tenant_of(caller: Caller, tenant: str | None) -> str | None:
    if caller.admin:
        return tenant
    if tenant is not None and tenant != caller.key.tenant:
        raise _forbidden(f"this key belongs to tenant {caller.key.tenant!r}; it cannot read {tenant!r}")
    return caller.key.tenant


def _bad(exc: Exception) -> GatewayError:
    return GatewayError(400, str(exc), code="invalid_request")


def _not_found(message: str, param: str) -> GatewayError:
    return GatewayError(404, message, code="not_found", param=param)


budgets = APIRouter(tags=["budgets"])
usage = APIRouter(tags=["usage"])
api_keys = APIRouter(tags=["keys"])
defenses = APIRouter(tags=["defenses"])
group_chats = APIRouter(tags=["groups"])


@budgets.get("/budgets", response_model=list[AccountOut])
def list_accounts(ctx: Ctx, caller: AnyCaller) -> list[AccountOut]:
    """Every account (admin) or the caller's tenant's accounts, with settled, reserved and remaining money."""
    accounts = ctx.engine.store.accounts()
    if not caller.admin:
        accounts = [a for a in accounts if _in_tenant(a, ctx.namespace, caller.key.tenant)]
    return [AccountOut(budget_id=a.budget.id, level=a.budget.level, scope=a.scope, period_key=a.period_key,
                       limit_mc=a.budget.limit_mc, settled_mc=a.settled_mc, reserved_mc=a.reserved_mc,
                       remaining_mc=a.remaining_mc) for a in accounts]


@budgets.get("/budgets/idle", response_model=list[IdleBudgetOut])
def list_idle_budgets(ctx: Ctx, caller: AnyCaller) -> list[IdleBudgetOut]:
    """The budgets that matched no call in their current period (DESIGN.md rule 14), with why.

    A budget with no account in its current period is absent from ``GET /budgets``, so a
    budget whose scope names no traffic (a typo, a missing id level) would otherwise be
    invisible here. Admin: every idle budget; a tenant key: its tenant's.
    """
    store = ctx.engine.store
    idle = idle_budgets(store.budgets(), store.accounts(), ctx.engine.clock.now())
    if not caller.admin:
        idle = [i for i in idle if _scope_in_tenant(i.budget.level, i.budget.scope, ctx.namespace, caller.key.tenant)]
    return [IdleBudgetOut(budget_id=i.budget.id, level=i.budget.level, scope=i.budget.scope, period_key=i.period_key,
                          last_period_key=i.last_period_key, message=i.message) for i in idle]


@budgets.put("/budgets", response_model=BudgetOut)
def put_budget(body: BudgetIn, ctx: Ctx, _: AdminCaller) -> BudgetOut:
    """Create or replace a budget (admin)."""
    try:
        scope = budget_scope(body.level, tenant=body.tenant, agent=body.agent, conversation=body.conversation,
                             task=body.task, group=body.group, namespace_default=ctx.namespace)
        budget = Budget(level=body.level, scope=scope, limit_mc=body.limit_mc, period=body.period,
                        timezone=body.timezone)
    except (BudgetError, ValueError) as exc:
        raise _bad(exc) from None
    ctx.engine.store.put_budget(budget)
    return BudgetOut(id=budget.id, level=budget.level, scope=budget.scope, limit_mc=budget.limit_mc,
                     period=budget.period, timezone=budget.timezone)


@budgets.delete("/budgets/{budget_id}", status_code=204)
def delete_budget(budget_id: str, ctx: Ctx, _: AdminCaller) -> Response:
    """Delete a budget (admin); its accounts stay for history."""
    if not ctx.engine.store.delete_budget(budget_id):
        raise _not_found(f"no budget {budget_id!r}; GET /admin/budgets lists them", "budget_id")
    return Response(status_code=204)


Since = Annotated[str | None, Query(alias="from", max_length=64, description="inclusive; ISO date or time (UTC)")]
Until = Annotated[str | None, Query(alias="to", max_length=64, description="exclusive; ISO date or time (UTC)")]


def _instant(text: str | None, name: str) -> datetime | None:
    try:
        return parse_instant(text, name)
    except ValueError as exc:
        raise GatewayError(400, str(exc), code="invalid_request", param=name) from None


def _range(since: str | None, until: str | None) -> TimeRange:
    """``[from, to)`` from the query; 400 naming the parameter on a malformed instant or an empty range."""
    start, end = _instant(since, "from"), _instant(until, "to")
    try:
        return TimeRange(start, end)
    except ValueError as exc:
        raise GatewayError(400, str(exc).replace("--", ""), code="invalid_request", param="to") from None


@usage.get("/usage", response_model=UsageOut)
def usage_by(ctx: Ctx, caller: AnyCaller, *, since: Since = None, until: Until = None,
             by: ChargebackBy | None = None, group_by: ChargebackBy = ChargebackBy.AGENT,
             tenant: Annotated[str | None, Query(max_length=256)] = None) -> UsageOut:
    """Settled usage per tenant, agent, API key, conversation, task or model in ``[from, to)``; a tenant key
    sees only its own tenant (``by`` wins over its older name ``group_by``)."""
    only = _tenant_of(caller, tenant)
    window, chosen = _range(since, until), by or group_by
    rows = [UsageRow(key=r.group, namespace=r.namespace, tenant=r.tenant, calls=r.calls, input_tokens=r.input_tokens,
                     output_tokens=r.output_tokens, cache_read_tokens=r.cache_read_tokens,
                     cache_write_tokens=r.cache_write_tokens, cost_mc=r.cost_mc)
            for r in sorted(chargeback_rows(ctx.engine.store.usage_records(), chosen, window, tenant=only),
                            key=lambda r: (r.group, r.namespace, r.tenant))]
    bounds = window.bounds()
    return UsageOut(tenant=only, group_by=chosen, since=bounds[0], until=bounds[1], rows=rows,
                    total_cost_mc=sum(r.cost_mc for r in rows))


@usage.get("/usage.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def usage_csv(ctx: Ctx, caller: AnyCaller, *, since: Since = None, until: Until = None,
              by: ChargebackBy = ChargebackBy.TENANT,
              tenant: Annotated[str | None, Query(max_length=256)] = None) -> Response:
    """The usage rows as the CSV ``comptroller report --by --csv`` writes (stable columns, most expensive first);
    a tenant key gets its own tenant's rows."""
    only, window = _tenant_of(caller, tenant), _range(since, until)
    rows = chargeback_rows(ctx.engine.store.usage_records(), by, window, tenant=only)
    return Response(chargeback_csv(rows, by, window), media_type="text/csv",
                    headers={"content-disposition": f'attachment; filename="usage-by-{by}.csv"'})


@usage.get("/report")
def report(ctx: Ctx, _: AdminCaller, *, since: Since = None, until: Until = None) -> dict[str, Any]:
    """The ledger's report over ``[from, to)``, as ``comptroller report --json`` writes it (admin)."""
    result: dict[str, Any] = ledger_report(ctx.engine.store, _range(since, until)).to_dict()
    return result


@usage.get("/pnl")
def pnl(ctx: Ctx, caller: AnyCaller, *, since: Since = None, until: Until = None, by: PnlBy = PnlBy.AGENT,
        period: Period = Period.MONTH) -> dict[str, Any]:
    """P&L per agent or tenant and period over ``[from, to)`` from the wallet transfers beside the ledger (posted
    after each settle with a ``[fees]`` schedule, or by ``comptroller wallet post`` / ``pnl``;
    :func:`comptroller.reports.pnl.pnl_document`), flagged below the policy's margin floor; a tenant key gets
    its own tenant's rows."""
    if ctx.transfers is None:
        raise _not_found("no P&L: this admin API has no wallet store; `comptroller pnl --db <ledger>` computes "
                         "it from the usage log", "by")
    return pnl_document(ctx.transfers.transfers(), by=by, period=period, window=_range(since, until),
                        margin_floor=ctx.margin_floor,
                        tenant=None if caller.admin else (ctx.namespace, caller.key.tenant))


@api_keys.get("/keys", response_model=list[KeyOut])
def list_keys(ctx: Ctx, caller: AnyCaller) -> list[KeyOut]:
    """Every key (admin) or the caller's tenant's keys; never the secrets."""
    return [_key_out(k) for k in ctx.keys.keys(None if caller.admin else caller.key.tenant)]


@api_keys.post("/keys", response_model=KeyOut, status_code=201)
def create_key(body: KeyIn, ctx: Ctx, _: AdminCaller) -> KeyOut:
    """Create a key (admin); the answer holds the key, shown this once."""
    try:
        record, plaintext = new_key(tenant=body.tenant, agent=body.agent, name=body.name, admin=body.admin,
                                    models=None if body.models is None else tuple(body.models))
    except ApiKeyError as exc:
        raise _bad(exc) from None
    ctx.keys.add(record)
    return _key_out(record, plaintext)


@api_keys.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: str, ctx: Ctx, _: AdminCaller) -> KeyOut:
    """Revoke a key (admin)."""
    if not ctx.keys.revoke(key_id, datetime.now(UTC)):
        raise _not_found(f"no key {key_id!r}; GET /admin/keys lists them", "key_id")
    record = ctx.keys.get(key_id)
    assert record is not None
    return _key_out(record)


def _defense(op: Callable[[], Any], view: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    try:
        state = op()
    except UnknownScopeError as exc:
        raise _not_found(str(exc), "scope") from None
    except (DefenseConfigError, ConcurrentChangeError) as exc:
        raise _bad(exc) from None
    record: dict[str, Any] = state.to_record() if view is None else view(state)
    return record


@defenses.get("/breakers")
def list_breakers(ctx: Ctx, _: AdminCaller) -> list[dict[str, Any]]:
    """Every spend-rate breaker with state (admin)."""
    return [b.to_record() for b in ctx.ops.breakers()]


@defenses.post("/breakers/reset")
def reset_breaker(body: ScopeIn, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """Close a breaker and reset its cooldown (admin)."""
    return _defense(lambda: ctx.ops.reset_breaker(body.level, body.scope, by=f"key {caller.key.id}"))


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def loop_view(history: LoopHistory, now: datetime) -> dict[str, Any]:
    """A loop scope as the admin API shows it (not its storage row, whose encoding is the store's).

    Returns:
        ``level``, ``scope``, ``status`` (closed, open, half-open at ``now``), ``lock`` (trips, detector,
        agents, fingerprint, template, times as UTC ISO 8601), ``turns`` (agents of the last turns, oldest
        first) and ``families``: one object per request family, least recently seen first (agent,
        fingerprint, count, first_at, last_at, last_call_id, template, reserved_mc in millicents).
    """
    lock = history.lock
    return {
        "level": str(history.level), "scope": history.scope, "status": str(lock.status(now)),
        "lock": {"trips": lock.trips, "detector": lock.detector, "agent": lock.agent,
                 "other_agent": lock.other_agent, "fingerprint": lock.fingerprint, "template": lock.template,
                 "opened_at": _iso(lock.opened_at), "open_until": _iso(lock.open_until),
                 "last_trip_at": _iso(lock.last_trip_at)},
        "turns": list(history.turns), "turn_at": _iso(history.turn_at),
        "families": [{"agent": e.agent, "fingerprint": e.fingerprint, "count": e.count,
                      "first_at": _iso(e.first_at), "last_at": _iso(e.last_at), "last_call_id": e.last_call_id,
                      "template": e.template, "reserved_mc": e.reserved_mc} for e in history.entries],
    }


@defenses.get("/loops")
def list_loops(ctx: Ctx, _: AdminCaller) -> list[dict[str, Any]]:
    """Every loop scope with its lock and request families (admin; see :func:`loop_view`)."""
    now = ctx.ops.clock.now()
    return [loop_view(h, now) for h in ctx.ops.loops()]


@defenses.post("/loops/reset")
def reset_loop(body: ScopeIn, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """Close a loop lock and clear the scope's loop history (admin; answers as :func:`loop_view`)."""
    return _defense(lambda: ctx.ops.reset_loop(body.level, body.scope, by=f"key {caller.key.id}"),
                    lambda history: loop_view(history, ctx.ops.clock.now()))


@defenses.get("/kill-switches")
def list_kill_switches(ctx: Ctx, _: AdminCaller) -> list[dict[str, Any]]:
    """Every kill switch that was ever tripped (admin)."""
    return [k.to_record() for k in ctx.ops.kill_switches()]


@defenses.post("/kill-switches/trip")
def trip_kill_switch(body: KillIn, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """Trip a kill switch: every call under the scope is refused (503 kill_switch) until reset (admin)."""
    return _defense(lambda: ctx.ops.kill(body.level, body.scope, by=f"key {caller.key.id}", reason=body.reason))


@defenses.post("/kill-switches/reset")
def reset_kill_switch(body: ScopeIn, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """Reset a kill switch (admin)."""
    return _defense(lambda: ctx.ops.unkill(body.level, body.scope, by=f"key {caller.key.id}"))


def _group_out(ctx: _Context, definition: GroupDefinition) -> GroupOut:
    group = definition.group
    members = [MemberOut(agent=m.agent, role=m.role, description=m.description, decides=Flag.DECIDES in m.flags,
                         tenant=definition.tenants[m.agent]) for m in group.members]
    return GroupOut(id=group.id, conversation=group.conversation, mode=str(definition.mode),
                    k=definition.config.k, members=members,
                    budget_remaining=ctx.groups.remaining(group.id))


def _visible_group(ctx: _Context, caller: Caller, group_id: str) -> GroupDefinition:
    try:
        definition = ctx.groups.group(group_id)
    except UnknownGroupError as exc:
        raise _not_found(str(exc) if caller.admin else f"no group {group_id!r} for this key", "group_id") from None
    if not visible_to(caller, definition):
        raise _not_found(f"no group {group_id!r} for this key", "group_id")
    return definition


@group_chats.get("/groups", response_model=list[GroupOut])
def list_groups(ctx: Ctx, caller: AnyCaller) -> list[GroupOut]:
    """Every group (admin), or the groups with a member of the caller's tenant."""
    out = []
    for group_id in ctx.groups.group_ids():
        with contextlib.suppress(UnknownGroupError):  # removed meanwhile
            definition = ctx.groups.group(group_id)
            if visible_to(caller, definition):
                out.append(_group_out(ctx, definition))
    return out


@group_chats.get("/groups/{group_id}", response_model=GroupOut)
def get_group(group_id: Annotated[str, Path(max_length=256)], ctx: Ctx, caller: AnyCaller) -> GroupOut:
    """One group, if the caller may see it (admin, or a member of its tenant is in it)."""
    return _group_out(ctx, _visible_group(ctx, caller, group_id))


@group_chats.put("/groups/{group_id}", response_model=GroupOut)
def put_group(group_id: Annotated[str, Path(max_length=256)],
              body: Annotated[dict[str, JsonValue], Body(
                  description="the group's [groups.NAME] table as JSON: members (agent, role, description, "
                              "decides, tenant), k, cooldown_messages, cooldown_s, relevance_min, "
                              "mentions_only_below, steps, wrap_up, escalate_loops, loops, roles, conversation, "
                              "mode (strict | advisory) "
                              "(see comptroller.groups.config)",
                  openapi_examples={"review": {"summary": "a writer and a judge", "value": GROUP_EXAMPLE}})],
              ctx: Ctx, _: AdminCaller) -> GroupOut:
    """Create or replace a group (admin); kept in the ledger, so every worker and restart sees it."""
    try:
        definition = GroupDefinition.from_mapping(group_id, dict(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise GatewayError(400, f"{param or 'group'}: {first['msg']}", code="invalid_request", param=param) from None
    except (GroupError, ValueError) as exc:
        raise _bad(exc) from None
    ctx.groups.put_group(definition, persist=True)
    return _group_out(ctx, definition)


@group_chats.delete("/groups/{group_id}", status_code=204)
def delete_group(group_id: Annotated[str, Path(max_length=256)], ctx: Ctx, _: AdminCaller) -> Response:
    """Remove a group (admin), for every worker and after a restart; its spend and room stay in the ledger."""
    if not ctx.groups.remove_group(group_id, persist=True):
        raise _not_found(f"no group {group_id!r}; GET /admin/groups lists them", "group_id")
    return Response(status_code=204)


async def _render(request: Request, exc: Exception) -> Response:
    """Every error in the gateway's OpenAI shape: ours, FastAPI's validation errors (400 naming the
    field) and Starlette's HTTP errors (404, 405...)."""
    if isinstance(exc, GatewayError):
        return exc.response()
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return error_response(400, f"{param or 'request'}: {first['msg']}", type_="invalid_request_error",
                              code="invalid_request", param=param)
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), type_="invalid_request_error", code="invalid_request",
                          headers=dict(exc.headers or {}))


def admin_app(*, engine: Engine, keys: KeyStore, identity: Identity, namespace: str,
              groups: GroupService | None = None, transfers: TransferStore | None = None,
              margin_floor: Decimal | None = None) -> FastAPI:
    """The admin API over one engine's ledger, key store and group registry (mount it at ``/admin``).

    Args:
        groups: the group registry the gateway dispatches with (default: an empty one).
        transfers: the wallets' transfer store beside the ledger, for ``GET /pnl`` (None: 404).
        margin_floor: the policy's ``fees.margin_floor`` (P&L rows below it are flagged; None: none).
    """
    app = FastAPI(title="comptroller admin API", version="1", docs_url=None, redoc_url=None, responses=ERROR_RESPONSES)
    app.router.routes.extend(docs_routes(app.title))  # /docs with vendored assets (no CDN), / -> /docs
    registry = groups if groups is not None else GroupService(engine=engine, namespace=namespace)
    app.state.admin = _Context(engine=engine, keys=keys, identity=identity, namespace=namespace,
                               ops=Admin(engine.store, engine.clock), groups=registry, transfers=transfers,
                               margin_floor=margin_floor)
    for error in (GatewayError, RequestValidationError, HTTPException):
        app.add_exception_handler(error, _render)
    for router in (budgets, usage, api_keys, defenses, group_chats):
        app.include_router(router)
    return app
