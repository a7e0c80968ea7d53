"""The UI's page handlers: read the query or form, ask the admin services, render a template.

Each handler runs in a worker thread (the ledger reads block) and takes the
:class:`~comptroller.ui.shell.UI`, the request and the logged-in session. What a page shows
is computed by :mod:`comptroller.ui.views`; a tenant naming another tenant raises
:class:`Forbidden` (a 403 page), bad input is a 400 page naming the field.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from comptroller.domain.breaker import BreakerStatus
from comptroller.domain.budgets import Budget, BudgetError, Period, budget_scope, limit_usd_to_mc
from comptroller.domain.defenses.errors import DefenseConfigError, UnknownScopeError
from comptroller.domain.scopes import Level, scope_key
from comptroller.engine.admin import ConcurrentChangeError
from comptroller.reports.routing import TOP_TIER_WARNING_SHARE, build_routing_report, routed_from_events
from comptroller.ui.views import (
    GROUP_FIELDS,
    Filters,
    Viewer,
    bucket_days,
    budget_rows,
    groups,
    percentile,
    request_rows,
    series,
    spend_between,
)

if TYPE_CHECKING:
    from comptroller.ui.session import Session
    from comptroller.ui.shell import UI

__all__ = ["BadInput", "Forbidden", "budgets", "defenses", "kill", "overview", "request_table", "requests",
           "reset_breaker", "routing", "set_budget", "unkill"]

_RANGE_DAYS = 30
_RANGE_DAYS_MAX = 3 * 366  # a point per day: at most ~1,100 points per series
_TOP = 10
_SEARCH = ("tenant", "agent", "conversation", "task", "outcome")


class Forbidden(Exception):  # noqa: N818 (an HTTP answer, as Starlette's HTTPException)
    """The viewer asked for something it may not see (a 403 page)."""


class BadInput(Exception):  # noqa: N818 (an HTTP answer)
    """A query or form field is invalid (a 400 page naming it)."""


def _viewer(session: Session) -> Viewer:
    assert session.viewer is not None  # the route checked it
    return session.viewer


def _tenant(viewer: Viewer, asked: str | None) -> str | None:
    """The tenant filter: the asked one for an admin; a tenant key may only ask for its own."""
    asked = asked or None
    if viewer.tenant is None:
        return asked
    if asked not in (None, viewer.tenant):
        raise Forbidden(f"This key belongs to tenant {viewer.tenant!r}; it cannot see tenant {asked!r}.")
    return viewer.tenant


def _day(value: str | None, name: str, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name}: {value!r} is not a date; use YYYY-MM-DD") from None


def _filters(request: Request, viewer: Viewer, last_day: date) -> Filters:
    q = request.query_params
    end = _day(q.get("end"), "end", last_day)
    start = _day(q.get("start"), "start", end - timedelta(days=_RANGE_DAYS - 1))
    if start > end or (end - start).days >= _RANGE_DAYS_MAX:
        raise BadInput(f"start {start} .. end {end}: the range must run forward and span at most "
                       f"{_RANGE_DAYS_MAX} days")
    group_by = q.get("group_by") or "agent"
    if group_by not in GROUP_FIELDS:
        raise BadInput(f"group_by: {group_by!r} is not one of {', '.join(GROUP_FIELDS)}")
    return Filters(start, end, _tenant(viewer, q.get("tenant")), q.get("agent") or None, q.get("model") or None,
                   group_by)


def overview(ui: UI, request: Request, session: Session) -> Response:
    """Spend today and this month against budgets, spend over time, top conversations and tasks, cost per task."""
    viewer = _viewer(session)
    now = ui.engine.clock.now().astimezone(UTC)
    records = [r for r in ui.engine.store.usage_records() if viewer.sees(r.attribution)]
    tenant = _tenant(viewer, request.query_params.get("tenant"))
    last_day = max((r.resolved_at.date() for r in records if tenant in (None, r.attribution.tenant)),
                   default=now.date())  # the range ends on the last day with spend, unless asked
    filters = _filters(request, viewer, last_day)
    kept = [r for r in records if filters.keeps(r)]
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    month = today.replace(day=1)
    scoped = [r for r in records if filters.tenant in (None, r.attribution.tenant)]
    rows, _ = budget_rows(ui.engine.store.accounts(), (), viewer=viewer, namespace=ui.namespace, now=now)
    own = None if filters.tenant is None else scope_key(ui.namespace, filters.tenant)
    gauges = [r for r in rows if r.current and r.budget.period is not Period.TOTAL and (
        (r.budget.level is Level.NAMESPACE and own is None) or (r.budget.level is Level.TENANT and own in (None,
                                                                                                         r.scope)))]
    task_costs = sorted(g.cost_mc for g in groups((r for r in kept if r.attribution.task), _task))
    chart = series(kept, filters)
    return ui.render(
        request, "overview.html", session, filters=filters, group_fields=GROUP_FIELDS,
        today_mc=spend_between(scoped, today, today + timedelta(days=1)),
        month_mc=spend_between(scoped, month, now + timedelta(seconds=1)), gauges=gauges,
        table=groups(kept, _by(filters.group_by)), total_mc=sum(r.cost_mc for r in kept), calls=len(kept),
        top_conversations=[g for g in groups(kept, _conversation) if g.key != "-"][:_TOP],
        top_tasks=[g for g in groups(kept, _task) if g.key != "-"][:_TOP], tasks=len(task_costs),
        p50_task_mc=percentile(task_costs, 50), p95_task_mc=percentile(task_costs, 95),
        chart=json.dumps({"days": chart.days, "names": chart.names, "values": chart.values}),
        bucket=bucket_days(filters),
        choices={f: sorted({_by(f)(r) for r in scoped}) for f in ("tenant", "agent", "model")})


def _by(field: str) -> Any:
    return lambda r: r.model if field == "model" else (getattr(r.attribution, field) or "-")


def _conversation(r: Any) -> str:
    return str(r.attribution.conversation or "-")


def _task(r: Any) -> str:
    return str(r.attribution.task or "-")


def budgets(ui: UI, request: Request, session: Session, *, error: str | None = None, status: int = 200,
            form: dict[str, str] | None = None) -> Response:
    """Every visible budget account with limit, settled, reserved, remaining, next reset and utilisation."""
    viewer = _viewer(session)
    rows, idle = budget_rows(ui.engine.store.accounts(), ui.engine.store.budgets(), viewer=viewer,
                             namespace=ui.namespace, now=ui.engine.clock.now())
    return ui.render(request, "budgets.html", session, status, rows=rows, idle=idle, error=error, form=form or {},
                     levels=[str(level) for level in Level], periods=[str(p) for p in Period],
                     saved=request.query_params.get("saved"))


def set_budget(ui: UI, request: Request, session: Session) -> Response:
    """Create or replace a budget from the form (admin), then back to the Budgets page."""
    form = {k: str(v).strip() for k, v in request.state.form.items() if k != "csrf"}
    try:
        usd = Decimal(form.get("limit_usd") or "x")
        level = Level(form.get("level") or "")
        scope = budget_scope(level, tenant=form.get("tenant") or None, agent=form.get("agent") or None,
                             conversation=form.get("conversation") or None, task=form.get("task") or None,
                             namespace_default=ui.namespace)
        budget = Budget(level=level, scope=scope, limit_mc=limit_usd_to_mc(usd),
                        period=Period(form.get("period") or "month"), timezone=form.get("timezone") or "UTC")
    except InvalidOperation:
        return budgets(ui, request, session, error=f"limit_usd: {form.get('limit_usd')!r} is not a number of "
                       "dollars, e.g. 12.50", status=400, form=form)
    except (BudgetError, ValueError) as exc:
        return budgets(ui, request, session, error=str(exc), status=400, form=form)
    ui.engine.store.put_budget(budget)
    base = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{base}/budgets?saved={budget.id}", status_code=303)


def defenses(ui: UI, request: Request, session: Session, *, error: str | None = None,
             status: int = 200) -> Response:
    """Breakers and kill switches (admin) and the recent refusals the viewer may see, with their reasons."""
    viewer = _viewer(session)
    refusals = [e for e in ui.engine.store.events("refusal") if viewer.sees_scope(ui.namespace, e.scope, e.level)]
    refusals.sort(key=lambda e: e.ts, reverse=True)
    counts = Counter((e.code, e.level or "-") for e in refusals)
    return ui.render(request, "defenses.html", session, status, error=error,
                     breakers=sorted(ui.ops.breakers(), key=lambda b: b.status is BreakerStatus.CLOSED)
                     if viewer.admin else [],
                     switches=ui.ops.kill_switches() if viewer.admin else [], refusals=refusals[:100],
                     counts=sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
                     levels=[str(level) for level in Level])


def _confirm(ui: UI, request: Request, session: Session, action: str, what: str) -> Response | None:
    """The confirmation page, unless the form says ``confirm=yes``."""
    form = request.state.form
    if form.get("confirm") == "yes":
        return None
    fields = {k: str(v) for k, v in form.items() if k not in ("csrf", "confirm")}
    return ui.render(request, "confirm.html", session, action=action, what=what, fields=fields)


def _defense_op(ui: UI, request: Request, session: Session, op: Any) -> Response:
    try:
        op()
    except (UnknownScopeError, DefenseConfigError, ConcurrentChangeError, ValueError) as exc:
        return defenses(ui, request, session, error=str(exc), status=400)
    base = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{base}/defenses", status_code=303)


def _scope_form(request: Request) -> tuple[Level, str]:
    form = request.state.form
    try:
        level = Level(str(form.get("level") or ""))
    except ValueError:
        raise BadInput(f"level: {form.get('level')!r} is not one of {', '.join(Level)}") from None
    scope = str(form.get("scope") or "").strip()
    if not scope:
        raise BadInput("scope: give the scope key, e.g. the namespace for the whole platform")
    return level, scope


def kill(ui: UI, request: Request, session: Session) -> Response:
    """Trip a kill switch after a confirmation page (admin)."""
    level, scope = _scope_form(request)
    reason = str(request.state.form.get("reason") or "").strip()
    page = _confirm(ui, request, session, "kill", f"Trip the kill switch on {level} {scope!r}: every call under it "
                    "is refused until it is reset.")
    return page or _defense_op(ui, request, session, lambda: ui.ops.kill(
        level, scope, by=f"ui key {_viewer(session).key_id}", reason=reason))


def unkill(ui: UI, request: Request, session: Session) -> Response:
    """Reset a kill switch after a confirmation page (admin)."""
    level, scope = _scope_form(request)
    page = _confirm(ui, request, session, "unkill", f"Reset the kill switch on {level} {scope!r}: calls under it "
                    "are admitted again.")
    return page or _defense_op(ui, request, session, lambda: ui.ops.unkill(
        level, scope, by=f"ui key {_viewer(session).key_id}"))


def reset_breaker(ui: UI, request: Request, session: Session) -> Response:
    """Close a breaker after a confirmation page (admin)."""
    level, scope = _scope_form(request)
    page = _confirm(ui, request, session, "breaker-reset", f"Close the breaker on {level} {scope!r} and reset "
                    "its cooldown.")
    return page or _defense_op(ui, request, session, lambda: ui.ops.reset_breaker(
        level, scope, by=f"ui key {_viewer(session).key_id}"))


def _request_rows(ui: UI, request: Request, session: Session) -> tuple[dict[str, str], list[Any]]:
    viewer = _viewer(session)
    search = {k: request.query_params.get(k, "") for k in _SEARCH}
    if viewer.tenant is not None and search["tenant"] not in ("", viewer.tenant):
        raise Forbidden(f"This key belongs to tenant {viewer.tenant!r}; it cannot see tenant {search['tenant']!r}.")
    rows = request_rows(ui.engine.store.usage_records(), ui.engine.store.events("refusal"), viewer=viewer,
                        namespace=ui.namespace, search=search)
    return search, rows


def requests(ui: UI, request: Request, session: Session) -> Response:
    """The request log page: the newest calls, searchable."""
    search, rows = _request_rows(ui, request, session)
    return ui.render(request, "requests.html", session, search=search, rows=rows)


def request_table(ui: UI, request: Request, session: Session) -> Response:
    """The request log's table body alone (htmx swaps it in as the search changes)."""
    _, rows = _request_rows(ui, request, session)
    return ui.render(request, "_request_rows.html", session, rows=rows)


def routing(ui: UI, request: Request, session: Session) -> Response:
    """Escalation rate and P50/P95 cost per tier for each cascade, warning above 30 % at the top tier."""
    viewer = _viewer(session)
    events = [e for e in ui.engine.store.events("route") if viewer.sees_scope(ui.namespace, e.scope, e.level)]
    try:
        reports = build_routing_report(routed_from_events(events))
    except ValueError as exc:
        return ui.render(request, "routing.html", session, reports=[], error=str(exc),
                         threshold=TOP_TIER_WARNING_SHARE)
    return ui.render(request, "routing.html", session, reports=reports, error=None, threshold=TOP_TIER_WARNING_SHARE)
