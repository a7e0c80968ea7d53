"""The group budget, read from the ledger: the remaining fraction of the conversation's budget.

The group budget is the conversation budget of DESIGN.md rule 1 (level
``conversation``, scope ``namespace|conversation``), the same account that
:meth:`comptroller.engine.Engine.admit` reserves on when a dispatched agent's call
is attributed to the conversation. So the dispatcher's ``k`` and the refusal of a
call read one number: ``limit - settled - reserved``.
"""

from __future__ import annotations

from datetime import datetime

from comptroller.domain.admission import account_keys
from comptroller.domain.scopes import Level, scope_key
from comptroller.ports import LedgerStore

__all__ = ["group_budget_remaining"]


def group_budget_remaining(store: LedgerStore, *, namespace: str, conversation: str, now: datetime) -> float | None:
    """The remaining fraction of the tightest conversation budget that applies at ``now``.

    Every conversation budget that applies (the conversation's own, else the level's
    default ``*``; one per period) counts; the smallest ``(limit - settled - reserved) /
    limit`` wins. An account not yet written has spent nothing (1.0). A budget of 0 mc
    is spent (0.0).

    Args:
        store: the ledger.
        namespace: the namespace of the group's calls.
        conversation: the group's conversation id.
        now: the current instant (aware UTC), for calendar periods.

    Returns:
        A fraction <= 1 (negative after a ceiling miss), or None if no conversation budget applies.
    """
    scope = scope_key(namespace, conversation)
    keys = account_keys([(Level.CONVERSATION, scope)], store.budgets(), now)
    if not keys:
        return None
    accounts = {(a.budget.id, a.scope, a.period_key): a for a in store.accounts()}
    fractions: list[float] = []
    for budget, scope_of, period in keys:
        account = accounts.get((budget.id, scope_of, period))
        used = 0 if account is None else account.settled_mc + account.reserved_mc
        fractions.append(0.0 if budget.limit_mc == 0 else (budget.limit_mc - used) / budget.limit_mc)
    return min(fractions)
