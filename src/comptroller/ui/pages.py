"""The UI's page handlers for the overview, budgets, requests and routing: read the query or form, ask the
admin services, render a template (the other pages: :mod:`.pages_defenses`, :mod:`.pages_cache`,
:mod:`.pages_wallets`).

Each handler runs in a worker thread (the ledger reads block) and takes the
:class:`~comptroller.ui.shell.UI`, the request and the logged-in session. What a page shows
is computed by :mod:`comptroller.ui.views`; a tenant naming another tenant raises
:class:`~comptroller.ui.inputs.Forbidden` (a 403 page), bad input is a 400 page naming the field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from comptroller.domain.budgets import Budget, BudgetError, Period, budget_scope, limit_usd_to_mc
from comptroller.domain.scopes import Level, scope_key
from comptroller.reports.routing import TOP_TIER_WARNING_SHARE, build_routing_report, routed_from_events
from comptroller.ui.inputs import Forbidden, base_of, range_filters, tenant_filter, viewer_of
from comptroller.ui.views import (
    GROUP_FIELDS,
    Viewer,
    bucket_days,
    budget_rows,
    groups,
    key_of,
    percentile,
    request_rows,
    series,
    spend_between,
)

if TYPE_CHECKING:
    from comptroller.ui.session import Session
    from comptroller.ui.shell import UI

__all__ = ["budgets", "overview", "request_table", "requests", "routing", "set_budget"]

_TOP = 10
_SEARCH = ("tenant", "agent", "key", "conversation", "task", "outcome")


def overview(ui: UI, request: Request, session: Session) -> Response:
    """Spend today and this month against budgets, spend over time, top conversations and tasks, cost per task."""
    viewer = viewer_of(session)
    now = ui.engine.clock.now().astimezone(UTC)
    records = [r for r in ui.engine.store.usage_records() if viewer.sees(r.attribution)]
    tenant = tenant_filter(viewer, request.query_params.get("tenant"))
    last_day = max((r.resolved_at.date() for r in records if tenant in (None, r.attribution.tenant)),
                   default=now.date())  # the range ends on the last day with spend, unless asked
    filters = range_filters(request, viewer, last_day)
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
        key_names=_key_names(ui, viewer) if filters.group_by == "key" else {},
        top_conversations=[g for g in groups(kept, _conversation) if g.key != "-"][:_TOP],
        top_tasks=[g for g in groups(kept, _task) if g.key != "-"][:_TOP], tasks=len(task_costs),
        p50_task_mc=percentile(task_costs, 50), p95_task_mc=percentile(task_costs, 95),
        chart=json.dumps({"days": chart.days, "names": chart.names, "values": chart.values}),
        bucket=bucket_days(filters),
        choices={f: sorted({key_of(r, f) for r in scoped}) for f in ("tenant", "agent", "model", "key")})


def _key_names(ui: UI, viewer: Viewer) -> dict[str, str]:
    """The names people gave the keys the viewer may see, by public id (for the spend-by-key table)."""
    return {k.id: k.name for k in ui.keys.keys(viewer.tenant) if k.name}


def _by(field: str) -> Any:
    return lambda r: key_of(r, field)


def _conversation(r: Any) -> str:
    return str(r.attribution.conversation or "-")


def _task(r: Any) -> str:
    return str(r.attribution.task or "-")


def budgets(ui: UI, request: Request, session: Session, *, error: str | None = None, status: int = 200,
            form: dict[str, str] | None = None) -> Response:
    """Every visible budget account with limit, settled, reserved, remaining, next reset and utilisation."""
    viewer = viewer_of(session)
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
    base = base_of(request)
    return RedirectResponse(f"{base}/budgets?saved={budget.id}", status_code=303)


def _request_rows(ui: UI, request: Request, session: Session) -> tuple[dict[str, str], list[Any]]:
    viewer = viewer_of(session)
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
    viewer = viewer_of(session)
    events = [e for e in ui.engine.store.events("route") if viewer.sees_scope(ui.namespace, e.scope, e.level)]
    try:
        reports = build_routing_report(routed_from_events(events))
    except ValueError as exc:
        return ui.render(request, "routing.html", session, reports=[], error=str(exc),
                         threshold=TOP_TIER_WARNING_SHARE)
    return ui.render(request, "routing.html", session, reports=reports, error=None, threshold=TOP_TIER_WARNING_SHARE)
