"""Rate limits: requests and tokens per minute (RPM, TPM) per API key, tenant and agent, by GCRA.

The generic cell rate algorithm (ITU-T I.371; as described by Brandur Leach, "Rate
Limiting, Cells, and GCRA", brandur.org/rate-limiting, and implemented by redis-cell;
Stripe's "Scaling your API with rate limiters" describes the same token-bucket
behaviour). A limit of ``L`` per minute has an emission interval ``T = 60 s / L`` per
unit (a request, or a token) and a burst tolerance of ``L`` units (``tau = L x T =
60 s``). The state is one number, the theoretical arrival time ``TAT``. A call of ``q``
units at ``now``: ``new = max(TAT, now) + q x T``; it conforms when ``new - now <= tau``
(then ``TAT = new``), else it is refused ``rate_limited`` with ``Retry-After = new -
tau - now``. So from idle exactly ``L`` units pass at once, and then one every ``T``; in
any interval of length ``D`` at most ``L + D / T`` units pass.

Time is integer nanoseconds since the epoch and ``T`` is rounded **up** to the
nanosecond, so the arithmetic is exact and never admits more than the limit.

TPM counts the call's token ceiling (``input_tokens_max + output_tokens_max``) at admit,
and at settle is corrected to the actual count: the unused tokens are handed back
(``TAT -= unused x T``, not below ``now``); a release hands back every token. RPM counts
the request at admit and keeps it (a released call was still made).

State: one row per limit and scope (kind ``limits``, key ``rate:rpm|tpm:level:scope``),
written by the guards in the reservation's transaction, so a refused call takes no slot
and every worker and replica shares it. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.limit_rows import row_key
from comptroller.domain.scopes import Level
from comptroller.domain.state import StateKey

__all__ = ["ANY", "RATE_LIMIT", "Gcra", "LimitLevel", "RateLimit", "RateUnit", "applicable", "conform", "ns", "refund",
           "refusal", "state_key"]

RATE_LIMIT = "rate"
"""The key prefix of rate-limit rows (kind :data:`~comptroller.domain.limit_rows.KIND`)."""
ANY = "*"
"""A rate limit's scope for every key, tenant or agent without a limit of its own."""
_MINUTE_NS = 60_000_000_000


class RateUnit(StrEnum):
    """What a rate limit counts per minute."""

    RPM = "rpm"
    TPM = "tpm"


class LimitLevel(StrEnum):
    """Who a rate limit applies to: the API key, the tenant or the agent of the call."""

    KEY = "key"
    TENANT = "tenant"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``limit`` requests (RPM) or tokens (TPM) per minute for one key, tenant or agent.

    Attributes:
        unit: ``rpm`` or ``tpm``.
        level: ``key``, ``tenant`` or ``agent``.
        scope: a key id, a tenant or agent scope key, or ``*`` (every one without its own limit).
        limit: units per minute (1..10**9); also the burst.

    Raises:
        ValueError: on a limit outside 1..10**9 or an empty scope.
    """

    unit: RateUnit
    level: LimitLevel
    scope: str
    limit: int

    def __post_init__(self) -> None:
        if type(self.limit) is not int or not 1 <= self.limit <= 10**9:
            raise ValueError(f"{self.unit} limit for {self.level} {self.scope!r} must be an integer in 1..10**9 "
                             f"per minute, got {self.limit!r} (0 would refuse every call: remove the limit or "
                             "use a kill switch)")
        if not self.scope:
            raise ValueError("rate limit scope must be an id or '*'")

    @property
    def interval_ns(self) -> int:
        """The emission interval ``T`` per unit, nanoseconds, rounded up."""
        return -(-_MINUTE_NS // self.limit)


@dataclass(frozen=True, slots=True)
class Gcra:
    """A rate limit's state: the theoretical arrival time (epoch ns) and the row version."""

    tat_ns: int = 0
    version: int = 0

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record."""
        return {"tat_ns": self.tat_ns}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar], version: int) -> Gcra:
        """Read :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        tat = record.get("tat_ns")
        if type(tat) is not int:
            raise ValueError(f"state record field 'tat_ns' must be an integer, got {tat!r:.100}")
        return cls(tat, version)


def ns(at: datetime) -> int:
    """An aware datetime as integer nanoseconds since the epoch (microsecond precision)."""
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def conform(state: Gcra, limit: RateLimit, units: int, now_ns: int) -> tuple[Gcra, int | None]:
    """GCRA for ``units`` at ``now_ns``: the new state, and None when it conforms, else the wait in ns.

    A refusal leaves the state unchanged. A call of more units than the burst never conforms;
    its wait is -1 (waiting cannot help).
    """
    interval = limit.interval_ns
    tau = limit.limit * interval
    new = max(state.tat_ns, now_ns) + units * interval
    if new - now_ns <= tau:
        return Gcra(new, state.version + 1), None
    return state, (-1 if units > limit.limit else new - tau - now_ns)


def refund(state: Gcra, limit: RateLimit, units: int, now_ns: int) -> Gcra:
    """Hand ``units`` back (a TPM ceiling corrected to the actual count), never moving TAT below ``now``."""
    if units <= 0 or state.tat_ns <= now_ns:
        return state
    return Gcra(max(now_ns, state.tat_ns - units * limit.interval_ns), state.version + 1)


def state_key(limit: RateLimit, scope: str) -> StateKey:
    """The row of ``limit`` for one key id, tenant or agent scope."""
    return row_key(RATE_LIMIT, f"{limit.unit}:{limit.level}:{scope}")


def applicable(limits: Sequence[RateLimit], key_id: str | None,
               scopes: Sequence[tuple[Level, str]]) -> list[tuple[RateLimit, str]]:
    """``(limit, scope)`` of every rate limit a call counts against (a named scope wins over ``*``).

    The key level applies only to calls that came with an API key (``key_id``).
    """
    by_level = {LimitLevel.TENANT: dict(scopes)[Level.TENANT], LimitLevel.AGENT: dict(scopes)[Level.AGENT],
                LimitLevel.KEY: key_id}
    out = []
    for level, scope in by_level.items():
        if scope is None:
            continue
        mine = [r for r in limits if r.level is level and r.scope == scope]
        units = {r.unit for r in mine}
        out += [(r, scope) for r in mine]
        out += [(r, scope) for r in limits if r.level is level and r.scope == ANY and r.unit not in units]
    return out


def refusal(limit: RateLimit, scope: str, units: int, wait_ns: int) -> Verdict:
    """The ``rate_limited`` verdict for a call of ``units`` that must wait ``wait_ns`` (-1: never fits)."""
    wait_s = None if wait_ns < 0 else wait_ns / 1e9
    what = "requests" if limit.unit is RateUnit.RPM else "tokens"
    advice = (f"this call alone needs {units} {what}, more than the limit: lower max_tokens"
              if wait_s is None else f"retry in {wait_s:.3f} s")
    level = {LimitLevel.TENANT: Level.TENANT, LimitLevel.AGENT: Level.AGENT}.get(limit.level)
    return Verdict(
        code=Code.RATE_LIMITED, rule=Rule.RATE_LIMIT, detector=f"{limit.unit}:{limit.level}", level=level,
        scope=scope, retry_after_s=wait_s,
        evidence={"unit": str(limit.unit), "limit_level": str(limit.level), "limit_per_minute": limit.limit,
                  "requested": units, "retry_after_s": wait_s},
        message=f"rate_limited: {limit.level} {scope!r} is over its {limit.unit.upper()} limit of {limit.limit} "
                f"{what} per minute (GCRA, burst {limit.limit}); {advice}.")
