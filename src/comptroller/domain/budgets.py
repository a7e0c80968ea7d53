"""Budgets: a limit in millicents on one scope, per period, with alert thresholds.

A :class:`Budget` targets one level and either one scope key or every scope of
that level (``scope="*"``, a default such as "every agent: $5 a day"). A specific
budget replaces the default of the same level and period for its scope; budgets
of different periods are independent constraints (a daily and a monthly limit
both hold).

Periods are calendar periods in the budget's time zone (UTC by default):
``day``, ``week`` (ISO weeks, starting Monday), ``month``, or ``total`` (never
rolls over). Spend is accounted in the period in which the call was admitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from comptroller.domain.scopes import Level

__all__ = [
    "ANY_SCOPE",
    "DEFAULT_ALERT_THRESHOLDS_PCT",
    "Budget",
    "BudgetError",
    "Period",
    "period_bounds",
    "period_key",
]

ANY_SCOPE = "*"
DEFAULT_ALERT_THRESHOLDS_PCT: tuple[int, ...] = (50, 80, 100)
_E = TypeVar("_E", bound=StrEnum)


class BudgetError(ValueError):
    """A budget definition is invalid (negative limit, unknown period or level, bad time zone)."""


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
