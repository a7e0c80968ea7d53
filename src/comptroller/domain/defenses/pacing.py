"""Layer 5: pacing; a period budget is spent no faster than the period passes, within slack and burst.

Source: "Multi-Agent Mesh Economics" (layer 5: long-term monthly pacing). The slack
and burst defaults (10 %, 5 %) are ours.

For a budget of ``limit_mc`` over the period ``[start, end)``
(:func:`~comptroller.domain.budgets.period_bounds`, in the budget's time zone), the
allowance at ``now`` is, in integer millicents::

    allowance = floor(limit * elapsed_us * (100 + slack_pct) / (period_us * 100))
              + floor(limit * burst_pct / 100)

with ``elapsed_us`` the microseconds since ``start`` (clamped to the period). A call
is over pace when ``settled + reserved + ceiling > allowance``: the same
pessimistic sum the budget rule uses (DESIGN.md rule 2). Over pace, the
configured action either refuses (``pace_exceeded``, with ``retry_after_s`` until
the allowance grows enough, or the period rolls over) or downgrades to the
agent's next cheaper allowed model that fits (:func:`apply_pacing`, with
:func:`.pinning.cheaper_models`). Only budgets whose period is in ``periods`` are
paced (default: month); ``total`` budgets have no elapsed fraction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from comptroller.domain.budgets import Period, period_bounds
from comptroller.domain.codes import Code
from comptroller.domain.defenses._checks import require_aware, require_int
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.pinning import Route, RouteReason
from comptroller.domain.defenses.verdict import Rule, Verdict
from comptroller.domain.defenses.windows import epoch_us, seconds_until
from comptroller.domain.ledger import AccountView
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import LEVELS

__all__ = ["PaceAction", "PaceReading", "PacingConfig", "apply_pacing", "check_pace", "pace_allowance_mc",
           "read_pace"]

_US = timedelta(microseconds=1)
_ORDER = {level: i for i, level in enumerate(LEVELS)}
_BOUNDS: dict[tuple[Period, str], tuple[datetime, datetime]] = {}  # the period last read per (period, zone)
_BOUNDS_US: dict[tuple[Period, str], tuple[int, int]] = {}  # the same, microseconds since the epoch
_BOUNDS_MAX = 1_024


class PaceAction(StrEnum):
    """What to do with a call over pace."""

    REFUSE = "refuse"
    DOWNGRADE = "downgrade"


@dataclass(frozen=True, slots=True)
class PacingConfig:
    """How budgets are paced.

    Attributes:
        slack_pct: how far ahead of the straight line spend may run, percent (0..1,000; default 10).
        burst_pct: an allowance on top, percent of the limit (0..100; default 5), so the
            first calls of a period are not refused.
        action: refuse, or downgrade to a cheaper allowed model.
        periods: the budget periods paced (default: month only).

    Raises:
        DefenseConfigError: on a percentage out of range, an unknown action or
            period, or pacing a ``total`` budget.
    """

    slack_pct: int = 10
    burst_pct: int = 5
    action: PaceAction = PaceAction.REFUSE
    periods: tuple[Period, ...] = (Period.MONTH,)

    def __post_init__(self) -> None:
        require_int("pacing", "slack_pct", self.slack_pct, low=0, high=1_000, unit=" %")
        require_int("pacing", "burst_pct", self.burst_pct, low=0, high=100, unit=" %")
        try:
            object.__setattr__(self, "action", PaceAction(str(self.action)))
            periods = tuple(Period(str(p)) for p in self.periods)
        except ValueError as exc:
            raise DefenseConfigError(f"pacing: {exc}; actions are refuse, downgrade; periods are day, "
                                     "week, month") from None
        if not periods or Period.TOTAL in periods:
            raise DefenseConfigError(f"pacing.periods must name day, week or month budgets, got {periods!r}; "
                                     "a total budget has no elapsed fraction to pace against")
        object.__setattr__(self, "periods", periods)


@dataclass(frozen=True, slots=True)
class PaceReading:
    """One budget's pace for one call.

    Attributes:
        account: the budget account read.
        ceiling_mc: what the call would hold, millicents.
        allowance_mc: what may be spent by now, millicents.
        start, end: the period (aware, in the budget's zone).
        elapsed_us, period_us: time elapsed and the period's length, microseconds.
    """

    account: AccountView
    ceiling_mc: int
    allowance_mc: int
    start: datetime
    end: datetime
    elapsed_us: int
    period_us: int

    @property
    def spent_mc(self) -> int:
        """Settled plus reserved, millicents."""
        return self.account.settled_mc + self.account.reserved_mc

    @property
    def over(self) -> bool:
        """True when the call would take spend past the allowance."""
        return self.spent_mc + self.ceiling_mc > self.allowance_mc


def pace_allowance_mc(config: PacingConfig, limit_mc: int, start: datetime, end: datetime,
                      now: datetime) -> int:
    """What may be spent by ``now`` in the period ``[start, end)``, millicents (rounded down).

    Raises:
        ValueError: on a naive ``now``, an empty period or a negative limit.
    """
    require_aware("now", now)
    if end <= start or limit_mc < 0:
        raise ValueError(f"pace needs a non-empty period and a limit >= 0, got {start}..{end}, {limit_mc}")
    period_us = (end - start) // _US
    elapsed_us = min(max((now - start) // _US, 0), period_us)
    paced = limit_mc * elapsed_us * (100 + config.slack_pct) // (period_us * 100)
    return paced + limit_mc * config.burst_pct // 100


def read_pace(config: PacingConfig, account: AccountView, ceiling_mc: int, now: datetime) -> PaceReading | None:
    """The pace of one account for a call, or None if its budget's period is not paced."""
    budget = account.budget
    if budget.period not in config.periods:
        return None
    bounds = _period(budget.period, budget.timezone, now)
    if bounds is None:
        return None
    start, end = bounds
    allowance = pace_allowance_mc(config, budget.limit_mc, start, end, now)
    period_us = (end - start) // _US
    elapsed_us = min(max((now - start) // _US, 0), period_us)
    return PaceReading(account, ceiling_mc, allowance, start, end, elapsed_us, period_us)


def _period(period: Period, timezone: str, now: datetime) -> tuple[datetime, datetime] | None:
    """:func:`~comptroller.domain.budgets.period_bounds`, memoised: periods tile time, so the last period
    read for ``(period, timezone)`` is the answer for every ``now`` inside it."""
    cached = _BOUNDS.get((period, timezone))
    if cached is not None and cached[0] <= now < cached[1]:
        return cached
    bounds = period_bounds(period, timezone, now)
    if bounds is not None:
        if len(_BOUNDS) >= _BOUNDS_MAX:
            _BOUNDS.clear()
        _BOUNDS[(period, timezone)] = bounds
    return bounds


def check_pace(config: PacingConfig, accounts: Sequence[AccountView], ceiling_mc: int,
               now: datetime) -> Verdict | None:
    """Refuse a call that would take any paced budget over its pace (the broadest level answers).

    Args:
        config: the pacing rule.
        accounts: the call's budget accounts, as read for the reservation.
        ceiling_mc: what the call would hold, millicents.
        now: the admission time (aware UTC).
    """
    reading = _worst(config, accounts, ceiling_mc, now)
    return None if reading is None else _verdict(reading, config, now, "over_pace", "")


def apply_pacing(config: PacingConfig, accounts: Sequence[AccountView], route: Route, *,
                 ceilings_mc: Mapping[str, int], downgrades: Sequence[str], now: datetime) -> Route | Verdict:
    """Keep the route if it is on pace; else refuse, or downgrade to the first cheaper model on pace.

    Args:
        config: the pacing rule (its ``action`` decides).
        accounts: the call's budget accounts.
        route: the route pinning chose.
        ceilings_mc: the request's ceiling on ``route.model`` and each downgrade, millicents.
        downgrades: the agent's cheaper allowed models, priciest first
            (:func:`.pinning.cheaper_models`).
        now: the admission time (aware UTC).

    Returns:
        ``route``; a :class:`Route` with reason ``pacing_downgrade``; or a
        ``pace_exceeded`` verdict (detector ``over_pace``, or
        ``no_cheaper_model_fits`` when downgrading found nothing).

    Raises:
        ValueError: if a model tried has no ceiling in ``ceilings_mc``.
    """
    reading = _worst(config, accounts, _ceiling(ceilings_mc, route.model), now)
    if reading is None:
        return route
    if config.action is PaceAction.REFUSE:
        return _verdict(reading, config, now, "over_pace", "")
    for model in downgrades:
        if _worst(config, accounts, _ceiling(ceilings_mc, model), now) is None:
            detail = (f"{route.model!r} (ceiling {format_usd(reading.ceiling_mc)}) would put budget "
                      f"{reading.account.budget.id!r} over pace ({format_usd(reading.allowance_mc)} by now); "
                      f"downgraded to {model!r} (ceiling {format_usd(ceilings_mc[model])})")
            return Route(model, route.requested_model, RouteReason.PACING_DOWNGRADE, detail)
    note = f" No cheaper allowed model fits the pace either (tried {list(downgrades)})."
    return _verdict(reading, config, now, "no_cheaper_model_fits", note)


def _ceiling(ceilings_mc: Mapping[str, int], model: str) -> int:
    if model not in ceilings_mc:
        raise ValueError(f"no ceiling for model {model!r}: price the request on every candidate model first")
    return ceilings_mc[model]


def _worst(config: PacingConfig, accounts: Sequence[AccountView], ceiling_mc: int,
           now: datetime) -> PaceReading | None:
    now_us = epoch_us(now)
    over = [r for a in accounts
            if _over(config, a, ceiling_mc, now, now_us) and (r := read_pace(config, a, ceiling_mc, now))]
    if not over:
        return None
    return min(over, key=lambda r: (_ORDER[r.account.budget.level], r.account.budget.id))


def _over(config: PacingConfig, account: AccountView, ceiling_mc: int, now: datetime, now_us: int) -> bool:
    """:attr:`PaceReading.over` of :func:`read_pace`'s reading (False if not paced), without building the reading:
    :func:`pace_allowance_mc` on whole microseconds since the epoch (``now_us``, :func:`.windows.epoch_us`)."""
    budget = account.budget
    if budget.period not in config.periods:
        return False
    bounds = _period_us(budget.period, budget.timezone, now, now_us)
    if bounds is None:
        return False
    start_us, period_us = bounds
    limit_mc = budget.limit_mc
    if limit_mc < 0 or period_us <= 0:  # as pace_allowance_mc
        raise ValueError(f"pace needs a non-empty period and a limit >= 0, got {period_us} us, {limit_mc}")
    elapsed_us = min(max(now_us - start_us, 0), period_us)
    allowance = (limit_mc * elapsed_us * (100 + config.slack_pct) // (period_us * 100)
                 + limit_mc * config.burst_pct // 100)
    return account.settled_mc + account.reserved_mc + ceiling_mc > allowance


def _period_us(period: Period, timezone: str, now: datetime, now_us: int) -> tuple[int, int] | None:
    """The start of :func:`_period`'s period and its length, whole microseconds since the epoch (memoised)."""
    cached = _BOUNDS_US.get((period, timezone))
    if cached is not None and cached[0] <= now_us < cached[1]:
        return cached[0], cached[1] - cached[0]
    bounds = _period(period, timezone, now)
    if bounds is None:
        return None
    start_us, end_us = epoch_us(bounds[0]), epoch_us(bounds[1])
    if len(_BOUNDS_US) >= _BOUNDS_MAX:
        _BOUNDS_US.clear()
    _BOUNDS_US[(period, timezone)] = (start_us, end_us)
    return start_us, end_us - start_us


def _retry_after_s(reading: PaceReading, config: PacingConfig, now: datetime) -> float:
    """Seconds until the allowance covers the call, or until the period ends if it never does."""
    limit = reading.account.budget.limit_mc
    short = reading.spent_mc + reading.ceiling_mc - limit * config.burst_pct // 100
    if limit <= 0:
        return seconds_until(reading.end, now)
    rate = limit * (100 + config.slack_pct)
    needed_us = -(-short * reading.period_us * 100 // rate)  # ceiling division
    return seconds_until(min(reading.start + needed_us * _US, reading.end), now)


def _verdict(reading: PaceReading, config: PacingConfig, now: datetime, detector: str, note: str) -> Verdict:
    budget = reading.account.budget
    elapsed_pct = 100 * reading.elapsed_us / reading.period_us
    wait = _retry_after_s(reading, config, now)
    return Verdict(
        code=Code.PACE_EXCEEDED, rule=Rule.PACING, detector=detector, level=budget.level, scope=reading.account.scope,
        retry_after_s=wait,
        evidence={
            "budget_id": budget.id, "limit_mc": budget.limit_mc, "spent_mc": reading.spent_mc,
            "ceiling_mc": reading.ceiling_mc, "allowance_mc": reading.allowance_mc,
            "elapsed_pct": round(elapsed_pct, 4), "slack_pct": config.slack_pct,
            "burst_pct": config.burst_pct, "period_start": reading.start.isoformat(),
            "period_end": reading.end.isoformat(),
        },
        message=(
            f"pace_exceeded: the {budget.period} budget {budget.id!r} (limit {format_usd(budget.limit_mc)}) may "
            f"have spent {format_usd(reading.allowance_mc)} by now ({elapsed_pct:.1f}% of the period elapsed, "
            f"+{config.slack_pct}% slack, +{config.burst_pct}% burst); it has {format_usd(reading.spent_mc)} "
            f"settled and reserved and this call needs {format_usd(reading.ceiling_mc)}.{note} Wait "
            f"{wait:.0f} s, use a cheaper model, or set the pacing action to downgrade."
        ),
    )
