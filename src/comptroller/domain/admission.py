"""The admission rule for budgets: every applicable budget must admit the ceiling.

DESIGN.md rule 1 ("the most restrictive wins") and rule 2 (pessimistic reservation):
a call holding ``ceiling_mc`` is admitted only if, on every account that applies,
``settled + reserved + ceiling <= limit``. When several refuse, the refusal names
the one with the least remaining money (ties: the broadest level), since raising
any other limit would not admit the call.

Storage backends call :func:`applicable_budgets` and :func:`decide` inside their
write transaction, so every backend applies the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from comptroller.domain.budgets import ANY_SCOPE, Budget, period_bounds, period_key
from comptroller.domain.codes import Code
from comptroller.domain.ledger import AccountView
from comptroller.domain.refusals import Refusal
from comptroller.domain.scopes import LEVELS, Level

__all__ = ["account_keys", "alert_thresholds_crossed", "applicable_budgets", "decide"]

_LEVEL_ORDER = {level: i for i, level in enumerate(LEVELS)}
"""Rank of each level, broadest first."""


def applicable_budgets(
    scopes: Sequence[tuple[Level, str]], budgets: Iterable[Budget]
) -> list[tuple[Budget, str]]:
    """Pick the budgets that apply to a call, each with its concrete scope key.

    A budget applies if it targets one of the call's ``(level, scope)`` pairs, or is
    that level's default (``scope="*"``) and no specific budget of the same level and
    period exists for the scope.

    Args:
        scopes: the call's scopes (:meth:`Attribution.scopes`).
        budgets: candidate budgets (may include unrelated ones).

    Returns:
        ``(budget, scope_key)`` pairs, ordered by level (broadest first) then period.
    """
    by_level = dict(scopes)
    specific: dict[tuple[Level, str], Budget] = {}
    defaults: dict[tuple[Level, str], Budget] = {}
    for budget in budgets:
        key = by_level.get(budget.level)
        if key is None:
            continue
        if budget.scope == key:
            specific[(budget.level, budget.period)] = budget
        elif budget.scope == ANY_SCOPE:
            defaults[(budget.level, budget.period)] = budget
    chosen = {**defaults, **specific}
    return [(b, by_level[b.level])
            for _, b in sorted(chosen.items(), key=lambda kv: (_LEVEL_ORDER[kv[0][0]], kv[0][1]))]


def decide(ceiling_mc: int, accounts: Sequence[AccountView], now: datetime | None = None) -> Refusal | None:
    """Admit or refuse a ceiling against every applicable account.

    Args:
        ceiling_mc: the amount the call would hold, millicents (>= 0).
        accounts: the accounts of every applicable budget, read in the same
            transaction that will apply the reservation.
        now: the admission time (aware UTC); with it, a refusal by a day, week or
            month budget whose limit could hold the ceiling carries ``retry_after_s``,
            the seconds until its period rolls over.

    Returns:
        None to admit; else the :class:`Refusal` of the most restrictive account.
    """
    refusing = [a for a in accounts if a.settled_mc + a.reserved_mc + ceiling_mc > a.budget.limit_mc]
    if not refusing:
        return None
    worst = min(refusing, key=lambda a: (a.remaining_mc, _LEVEL_ORDER[a.budget.level]))
    return Refusal(
        code=Code.BUDGET_EXCEEDED,
        level=worst.budget.level,
        scope=worst.scope,
        limit_mc=worst.budget.limit_mc,
        settled_mc=worst.settled_mc,
        reserved_mc=worst.reserved_mc,
        requested_mc=ceiling_mc,
        budget_id=worst.budget.id,
        retry_after_s=_until_rollover(worst, ceiling_mc, now),
    )


def _until_rollover(account: AccountView, ceiling_mc: int, now: datetime | None) -> float | None:
    """Seconds until the account's period ends, if a fresh period could hold the ceiling; else None."""
    budget = account.budget
    bounds = None if now is None else period_bounds(budget.period, budget.timezone, now)
    if now is None or bounds is None or ceiling_mc > budget.limit_mc:
        return None
    return max((bounds[1] - now).total_seconds(), 0.0)


def remaining_after(ceiling_mc: int, accounts: Sequence[AccountView]) -> int | None:
    """The least money left on any of the call's accounts once ``ceiling_mc`` is held, millicents.

    None when no budget applies. This is the ``X-Comptroller-Budget-Remaining-Mc`` the
    gateway returns: what the tightest budget can still hold after this call's ceiling.
    """
    return min((a.remaining_mc - ceiling_mc for a in accounts), default=None)


def alert_thresholds_crossed(account: AccountView, settled_after_mc: int) -> list[int]:
    """Alert thresholds (percent of the limit) that a settle crosses for the first time this period.

    Args:
        account: the account before the settle (``alert_pct_fired`` is the highest
            threshold already fired).
        settled_after_mc: the account's settled spend after the settle, millicents.

    Returns:
        The newly crossed thresholds, ascending (empty if none).
    """
    limit = account.budget.limit_mc
    return [
        pct for pct in account.budget.alert_thresholds_pct
        if pct > account.alert_pct_fired and settled_after_mc * 100 >= pct * limit and limit > 0
    ]


def account_keys(
    scopes: Sequence[tuple[Level, str]], budgets: Iterable[Budget], now: datetime
) -> list[tuple[Budget, str, str]]:
    """``(budget, scope key, period key)`` of every account a call admitted at ``now`` touches."""
    return [(b, scope, period_key(b.period, b.timezone, now)) for b, scope in applicable_budgets(scopes, budgets)]
