"""The Wallets & P&L page and the Actions & tasks page.

* ``GET /ui/wallets?period=month``: every wallet account's debits, credits, balance and floor (the
  transfer store's :meth:`~comptroller.storage.transfers.TransferStore.balances`), and the P&L per
  agent and per tenant (:func:`comptroller.domain.wallets.pnl.pnl_rows` over the stored transfers,
  the same rows ``comptroller pnl`` prints) with the below-margin flag of the policy's
  ``fees.margin_floor``. The page only reads: the transfers are posted by the engine's post-settle
  hook (a policy with ``[fees]``) or ``comptroller wallet post`` / ``comptroller pnl``.
* ``GET /ui/actions?status=``: the newest guarded actions with their state (allowed, refused,
  pending_approval, unverified, done...) and reasons, and the tasks with their state, assignee and
  spend, through :class:`~comptroller.engine.actions.ActionService` and
  :class:`~comptroller.engine.tasks.TaskService`.

A tenant key sees its own wallets (``agent:``, ``tenant:`` and ``conversation:`` accounts of its
scopes), P&L rows, actions and tasks only.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from comptroller.domain.actions import ActionStatus
from comptroller.domain.budgets import Period
from comptroller.domain.scopes import Level
from comptroller.domain.wallets import AccountKind
from comptroller.domain.wallets.pnl import PnlBy, pnl_rows, pnl_totals
from comptroller.ui.inputs import BadInput, viewer_of
from comptroller.ui.views import Viewer

if TYPE_CHECKING:
    from comptroller.ui.session import Session
    from comptroller.ui.shell import UI

__all__ = ["ACTIONS_MAX", "actions", "wallets"]

ACTIONS_MAX = 200
"""Actions the page lists (newest first)."""
_TENANT_KINDS = {AccountKind.AGENT: Level.AGENT, AccountKind.TENANT: Level.TENANT,
                 AccountKind.CONVERSATION: Level.CONVERSATION}
"""The wallet kinds that belong to a tenant, and the level of their scope key."""


def _sees_account(viewer: Viewer, namespace: str, account: str) -> bool:
    """True when the viewer may see a wallet account (an admin: all; a tenant: its own scopes' wallets)."""
    if viewer.tenant is None:
        return True
    kind, _, scope = account.partition(":")
    level = _TENANT_KINDS.get(kind)  # type: ignore[call-overload]  # a StrEnum key matches its string
    return level is not None and viewer.sees_scope(namespace, scope, level)


def _period(request: Request) -> Period:
    value = request.query_params.get("period") or "month"
    try:
        return Period(value)
    except ValueError:
        raise BadInput(f"period: {value!r} is not one of {', '.join(Period)}") from None


def wallets(ui: UI, request: Request, session: Session) -> Response:
    """Wallet balances and the P&L per agent and per tenant, flagged below the margin floor."""
    viewer = viewer_of(session)
    period = _period(request)
    if ui.transfers is None:
        return ui.render(request, "wallets.html", session, wired=False, period=period, periods=list(Period))
    transfers = ui.transfers.transfers()
    balances = [b for b in ui.transfers.balances() if _sees_account(viewer, ui.namespace, b.account)]
    balances.sort(key=lambda b: (b.account.partition(":")[0] not in ("agent", "tenant"), b.account))
    pnl = {}
    for by, level in ((PnlBy.AGENT, Level.AGENT), (PnlBy.TENANT, Level.TENANT)):
        rows = [r for r in pnl_rows(transfers, by=by, period=period, margin_floor=ui.margin_floor)
                if viewer.sees_scope(ui.namespace, r.scope, level)]
        pnl[by.value] = (rows, pnl_totals(rows))
    return ui.render(request, "wallets.html", session, wired=True, period=period, periods=list(Period),
                     balances=balances, pnl=pnl, margin_floor=ui.margin_floor, transfers=len(transfers))


def actions(ui: UI, request: Request, session: Session) -> Response:
    """Recent actions with their state and reasons; tasks with their state, assignee and spend."""
    viewer = viewer_of(session)
    asked = request.query_params.get("status") or ""
    try:
        status = ActionStatus(asked) if asked else None
    except ValueError:
        raise BadInput(f"status: {asked!r} is not one of {', '.join(ActionStatus)}") from None
    every = ui.actions.list(viewer.tenant)
    counts = Counter(str(r.status) for r in every)
    shown = [r for r in every if status is None or r.status is status][::-1][:ACTIONS_MAX]
    tasks = ui.tasks.tasks(viewer.tenant)
    spend: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    wanted = {(t.tenant, t.id) for t in tasks}
    for record in ui.engine.store.usage_records():  # one pass; TaskService.spend reads the log once per task
        key = (record.attribution.tenant, record.attribution.task or "")
        if key in wanted:
            spend[key][0] += 1
            spend[key][1] += record.cost_mc
    per_task = {(t.tenant, t.id): spend.get((t.tenant, t.id), [0, 0]) for t in tasks}
    return ui.render(request, "actions.html", session, actions=shown, counts=sorted(counts.items()),
                     chosen=asked, statuses=[str(s) for s in ActionStatus], matched=sum(
                         1 for r in every if status is None or r.status is status),
                     tasks=tasks[::-1], spend=per_task, now=ui.engine.clock.now())
