"""Budgets: a limit in millicents on one scope, per period, with alert thresholds.

A :class:`Budget` targets one level and either one scope key or every scope of
that level (``scope="*"``, a default such as "every agent: $5 a day"). A specific
budget replaces the default of the same level and period for its scope; budgets
of different periods are independent constraints (a daily and a monthly limit
both hold).

Periods are calendar periods in the budget's time zone (UTC by default):
``day``, ``week`` (ISO weeks, starting Monday), ``month``, or ``total`` (never
rolls over). Spend is accounted in the period in which the call was admitted.

A budget's scope names every level above it explicitly (:func:`budget_scope`,
DESIGN.md rule 14: a budget that cannot match traffic is an error, never a silent
``default``). The ids each level needs (:data:`SCOPE_IDS`):

======================  ========================================  ===========================
level                   ids                                       scope key
======================  ========================================  ===========================
``namespace``           namespace                                 ``ns``
``tenant``              namespace, tenant                         ``ns|tenant``
``agent``               namespace, tenant, agent                  ``ns|tenant|agent``
``agent_conversation``  namespace, tenant, agent, conversation    ``ns|tenant|agent|conv``
``conversation``        namespace, tenant, conversation           ``ns|tenant|conv``
                        or namespace, group (a shared group's     ``ns|group``
                        conversation id)
``task``                namespace, tenant, task                   ``ns|tenant|task``
======================  ========================================  ===========================

The level's documented wildcard: leave out every id (the level's own included) and
the budget is the default of every scope of that level in every namespace
(``scope = "*"``). Naming only some ids is refused, naming the missing ones. A limit
given in USD that is above 0 but below 1 millicent is refused (:func:`limit_usd_to_mc`),
never rounded to $0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from comptroller.domain.money import usd_to_mc_half_up
from comptroller.domain.scopes import Level, scope_key

__all__ = [
    "ANY_SCOPE",
    "DEFAULT_ALERT_THRESHOLDS_PCT",
    "SCOPE_IDS",
    "Budget",
    "BudgetError",
    "Period",
    "ScopeIdsMissingError",
    "budget_scope",
    "limit_usd_to_mc",
    "period_bounds",
    "period_key",
]

ANY_SCOPE = "*"
DEFAULT_ALERT_THRESHOLDS_PCT: tuple[int, ...] = (50, 80, 100)
_E = TypeVar("_E", bound=StrEnum)


class BudgetError(ValueError):
    """A budget definition is invalid (negative limit, unknown period or level, bad time zone)."""


class ScopeIdsMissingError(BudgetError):
    """A budget names its own id but not every id of the levels above it.

    Attributes:
        level: the budget's level.
        missing: the missing ids, broadest first (``namespace``, ``tenant``, ...), so an
            edge can name its own options for them (``--namespace``, ``"tenant": ...``).
    """

    def __init__(self, message: str, *, level: Level, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.level = level
        self.missing = missing


class Period(StrEnum):
    """How often a budget rolls over."""

    TOTAL = "total"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


def _parse_enum(kind: type[_E], value: str, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise BudgetError(f"unknown {what} {value!r}; use one of: {allowed}") from None


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending limit on one scope.

    Attributes:
        level: the level it applies to.
        scope: a scope key (see :mod:`comptroller.domain.scopes`) or ``"*"`` for
            every scope of the level without a budget of its own.
        limit_mc: the limit in millicents (>= 0; 0 admits only free calls).
        period: the roll-over period.
        timezone: IANA time zone for calendar periods (default ``UTC``).
        alert_thresholds_pct: percentages of the limit at which an alert event
            fires, once per period (default 50, 80, 100).

    Raises:
        BudgetError: on a negative or non-integer limit, an unknown level or period,
            an unknown time zone, or thresholds outside 1..1000.
    """

    level: Level
    scope: str
    limit_mc: int
    period: Period = Period.TOTAL
    timezone: str = "UTC"
    alert_thresholds_pct: tuple[int, ...] = DEFAULT_ALERT_THRESHOLDS_PCT

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", _parse_enum(Level, str(self.level), "budget level"))
        object.__setattr__(self, "period", _parse_enum(Period, str(self.period), "budget period"))
        if type(self.limit_mc) is not int or self.limit_mc < 0:
            raise BudgetError(
                f"budget limit for {self.level} {self.scope!r} must be a non-negative integer of "
                f"millicents, got {self.limit_mc!r}"
            )
        if not self.scope:
            raise BudgetError("budget scope must be a scope key or '*'")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise BudgetError(f"unknown time zone {self.timezone!r}; use an IANA name such as 'UTC'") from None
        raw = self.alert_thresholds_pct
        # check the types before sorting: sorted() raises TypeError on mixed types
        valid = isinstance(raw, tuple | list | set | frozenset) and all(
            type(t) is int and 1 <= t <= 1000 for t in raw) and len(set(raw)) <= 16
        if not valid:
            raise BudgetError(f"alert thresholds must be up to 16 integers in 1..1000 %, got {raw!r}")
        object.__setattr__(self, "alert_thresholds_pct", tuple(sorted(set(raw))))

    @property
    def id(self) -> str:
        """Stable identity: one budget per (level, scope, period)."""
        return f"{self.level}:{self.period}:{self.scope}"


def _start_of(period: Period, day: date) -> date:
    if period is Period.DAY:
        return day
    if period is Period.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_key(period: Period, timezone: str, at: datetime) -> str:
    """The period an instant falls in, as the ISO date of its first day (or ``total``).

    Args:
        period: the budget's period.
        timezone: IANA zone the calendar is read in.
        at: an aware datetime.

    Raises:
        ValueError: if ``at`` is naive.
    """
    if period is Period.TOTAL:
        return "total"
    if at.tzinfo is None:
        raise ValueError("period_key needs an aware datetime (UTC); got a naive one")
    local = at.astimezone(ZoneInfo(timezone)).date()
    return _start_of(period, local).isoformat()


def period_bounds(period: Period, timezone: str, at: datetime) -> tuple[datetime, datetime] | None:
    """Start and end (aware, in the budget's zone) of the period containing ``at``; None for total."""
    if period is Period.TOTAL:
        return None
    zone = ZoneInfo(timezone)
    start_day = _start_of(period, at.astimezone(zone).date())
    if period is Period.DAY:
        end_day = start_day + timedelta(days=1)
    elif period is Period.WEEK:
        end_day = start_day + timedelta(days=7)
    else:
        end_day = (start_day.replace(day=28) + timedelta(days=4)).replace(day=1)
    start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=zone)
    end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=zone)
    return start, end


SCOPE_IDS: dict[Level, tuple[str, ...]] = {
    Level.NAMESPACE: ("namespace",),
    Level.TENANT: ("namespace", "tenant"),
    Level.AGENT: ("namespace", "tenant", "agent"),
    Level.AGENT_CONVERSATION: ("namespace", "tenant", "agent", "conversation"),
    Level.CONVERSATION: ("namespace", "tenant", "conversation"),
    Level.TASK: ("namespace", "tenant", "task"),
}
"""The ids a budget of each level names, broadest first; the last is the level's own."""

_GROUP_IDS = ("namespace", "group")


def _a(level: Level) -> str:
    return f"{'an' if level[0] in 'aeiou' else 'a'} {level}"


def budget_scope(level: Level, *, namespace: str | None = None, tenant: str | None = None,
                 agent: str | None = None, conversation: str | None = None, task: str | None = None,
                 group: str | None = None, namespace_default: str | None = None) -> str:
    """The scope key of a budget at ``level``, or ``*`` (the level's wildcard) when no id is named.

    Args:
        level: the budget's level.
        namespace, tenant, agent, conversation, task: the ids that name the scope; which a
            level needs is :data:`SCOPE_IDS`.
        group: a registered shared group's conversation id (level ``conversation`` only,
            instead of tenant and conversation): scope ``ns|group``, the group budget.
        namespace_default: the namespace to use when ``namespace`` is None and the level's
            own id is named (a policy file's own ``namespace = ...``); None for edges where
            the user must name it (the CLI).

    Returns:
        The scope key (:func:`comptroller.domain.scopes.scope_key`), or ``"*"``.

    Raises:
        ScopeIdsMissingError: the level's own id is named but an id above it is not.
        BudgetError: an id the level does not use is named (it would be silently ignored),
            ids are named without the level's own id, or ``group`` is mixed with tenant ids.
    """
    level = Level(level)
    given = {"namespace": namespace, "tenant": tenant, "agent": agent, "conversation": conversation,
             "task": task, "group": group}
    needed = _GROUP_IDS if group is not None else SCOPE_IDS[level]
    if group is not None and level is not Level.CONVERSATION:
        raise BudgetError(f"group names a shared group's conversation; it applies only to a conversation "
                          f"budget, not {_a(level)} budget")
    extra = [name for name, value in given.items() if value is not None and name not in needed]
    if extra:
        raise BudgetError(f"{_a(level)} budget's scope is {'|'.join(needed)}; {', '.join(extra)} "
                          f"{'does' if len(extra) == 1 else 'do'} not apply to it: leave "
                          f"{'it' if len(extra) == 1 else 'them'} out")
    own = needed[-1]
    if given[own] is None:
        named = [name for name in needed if given[name] is not None]
        if named:
            raise BudgetError(f"{_a(level)} budget naming {', '.join(named)} but not its own id ({own}) would apply "
                              f"to every {level} of every namespace; name {own}, or leave out {', '.join(named)} "
                              f"for that wildcard")
        return ANY_SCOPE
    if namespace is None:
        given["namespace"] = namespace_default
    missing = tuple(name for name in needed if given[name] is None)
    if missing:
        shared = (" (for a shared group's conversation, name it as group instead)"
                  if level is Level.CONVERSATION and "tenant" in missing else "")
        raise ScopeIdsMissingError(
            f"{_a(level)} budget for {own} {given[own]!r} needs {' and '.join(missing)} too{shared}: its scope is "
            f"{'|'.join(needed)}, and a scope with a guessed {missing[0]} would match no call", level=level,
            missing=missing)
    return scope_key(*(str(given[name]) for name in needed))


def limit_usd_to_mc(usd: Decimal, what: str = "limit_usd") -> int:
    """A budget limit in millicents from USD, rounding half up; never a positive limit rounded to 0.

    Args:
        usd: the limit in USD (exact Decimal).
        what: the field's name, for the message.

    Returns:
        int millicents (1 USD = 100,000 mc).

    Raises:
        BudgetError: if ``usd`` is negative, not finite, or above 0 but below 1 millicent
            ($0.00001), which would round to a $0 limit that refuses every paid call.
    """
    if not usd.is_finite() or usd < 0:
        raise BudgetError(f"{what} must be a finite amount >= 0 USD, got {usd}")
    mc = usd_to_mc_half_up(usd)
    if usd > 0 and mc == 0:
        raise BudgetError(f"{what} {usd:f} USD is below 1 millicent ($0.00001), the smallest amount the ledger "
                          f"keeps; it would be a $0 limit. Give at least 0.00001, or 0 to admit only free calls")
    return mc
