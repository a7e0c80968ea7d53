"""Quotas in other units than money: tokens (input + output, or output only) and messages (calls) per period.

Plans are sold in tokens (100K / 400K / 2M a month) and in messages (300 to 15K); issue 15
part 4. A quota is a budget in another unit, with the same reservation semantics
(DESIGN.md rule 2): at admit the call's token ceiling (``input_tokens_max +
output_tokens_max``, or ``output_tokens_max`` for an output-only quota; one message for a
message quota) is held; at settle it is settled to the actual count (``input_tokens +
output_tokens`` of the usage, or ``output_tokens``; one message); a release returns it.
A call that does not fit is refused ``quota_exceeded``, naming the unit, level, scope,
limit, used and held. Invariant at every moment: ``settled + held <= limit`` (a call
whose usage exceeds its own ceiling, a ceiling miss, is charged what it used).

State: one row per quota, scope and period (kind ``limits``, key
``quota:unit:level:period:period start:scope``), a :class:`~comptroller.domain.held_counts.HeldCount`,
changed by the guards in the reservation's transaction on every backend
(:mod:`comptroller.domain.limits`). A call's period is the one it was admitted in, as for
money. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from comptroller.domain.budgets import ANY_SCOPE, Period, period_bounds, period_key
from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Rule, Verdict
from comptroller.domain.held_counts import HeldCount, fits
from comptroller.domain.limit_rows import row_key
from comptroller.domain.scopes import Level
from comptroller.domain.state import StateKey
from comptroller.domain.usage import Usage

__all__ = ["QUOTA", "Quota", "QuotaUnit", "applicable", "ceiling", "check", "quota_key", "used"]

QUOTA = "quota"
"""The key prefix of quota rows (kind :data:`~comptroller.domain.limit_rows.KIND`)."""


class QuotaUnit(StrEnum):
    """What a quota counts."""

    TOKENS = "tokens"
    """Input + output tokens (cache reads and writes are input)."""
    OUTPUT_TOKENS = "output_tokens"
    """Output tokens only (reasoning included, as billed)."""
    MESSAGES = "messages"
    """Calls: one per admitted call."""


@dataclass(frozen=True, slots=True)
class Quota:
    """A limit in tokens or messages on one scope per period.

    Attributes:
        unit: what is counted.
        level: the level it applies to.
        scope: a scope key, or ``*`` for every scope of the level without a quota of its own
            (same unit and period).
        limit: the most that may be settled and held in one period (tokens or messages, >= 0).
        period: the roll-over period (``total``, ``day``, ``week``, ``month``).
        timezone: IANA zone of calendar periods.

    Raises:
        ValueError: on a negative or non-integer limit, or an empty scope.
    """

    unit: QuotaUnit
    level: Level
    scope: str
    limit: int
    period: Period = Period.MONTH
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if type(self.limit) is not int or self.limit < 0:
            raise ValueError(f"quota limit for {self.level} {self.scope!r} must be a non-negative integer of "
                             f"{self.unit}, got {self.limit!r}")
        if not self.scope:
            raise ValueError("quota scope must be a scope key or '*'")


def ceiling(unit: QuotaUnit, input_tokens_max: int, output_tokens_max: int) -> int:
    """What a call holds at admit, in ``unit`` (tokens from its bounds; one message)."""
    if unit is QuotaUnit.MESSAGES:
        return 1
    return output_tokens_max + (input_tokens_max if unit is QuotaUnit.TOKENS else 0)


def used(unit: QuotaUnit, usage: Usage) -> int:
    """What a settled call counts, in ``unit``."""
    if unit is QuotaUnit.MESSAGES:
        return 1
    return usage.output_tokens + (usage.input_tokens if unit is QuotaUnit.TOKENS else 0)


def applicable(quotas: Sequence[Quota], scopes: Sequence[tuple[Level, str]]) -> list[tuple[Quota, str]]:
    """``(quota, scope key)`` of every quota a call with ``scopes`` counts against.

    A quota naming the scope wins over a ``*`` quota of the same level, unit and period.
    """
    out = []
    for level, scope in scopes:
        mine = [q for q in quotas if q.level is level and q.scope == scope]
        named = {(q.unit, q.period) for q in mine}
        out += [(q, scope) for q in mine]
        out += [(q, scope) for q in quotas if q.level is level and q.scope == ANY_SCOPE
                and (q.unit, q.period) not in named]
    return out


def quota_key(quota: Quota, scope: str, at: datetime) -> StateKey:
    """The row of ``quota`` for ``scope`` in the period containing ``at`` (aware)."""
    start = period_key(quota.period, quota.timezone, at)
    return row_key(QUOTA, f"{quota.unit}:{quota.level}:{quota.period}:{start}:{scope}")


def check(count: HeldCount, quota: Quota, scope: str, amount: int, now: datetime) -> Verdict | None:
    """None when ``amount`` fits the quota's row, else the ``quota_exceeded`` refusal.

    ``retry_after_s`` is the time to the period's roll-over when the call would fit an
    empty period, else None (waiting cannot help: the call alone exceeds the limit).
    """
    if fits(count, amount, quota.limit):
        return None
    bounds = period_bounds(quota.period, quota.timezone, now)
    wait_s = None if bounds is None or amount > quota.limit else max(0.0, (bounds[1] - now).total_seconds())
    per = "in total" if quota.period is Period.TOTAL else f"per {quota.period}"
    unit = str(quota.unit).replace("_", " ")
    return Verdict(
        code=Code.QUOTA_EXCEEDED, rule=Rule.QUOTA, detector=str(quota.unit), level=quota.level, scope=scope,
        retry_after_s=wait_s,
        evidence={"unit": str(quota.unit), "period": str(quota.period), "limit": quota.limit,
                  "used": count.settled, "held": count.held, "requested": amount,
                  "remaining": quota.limit - count.settled - count.held},
        message=(f"quota_exceeded: the {quota.level} {scope!r} quota of {quota.limit} {unit} {per} has "
                 f"{count.settled} used and {count.held} held by calls in flight; this call needs {amount} "
                 f"more. Lower max_tokens, wait for the next period, or raise the quota."))
