"""A verdict: why a defense refused a call, as a value the engine returns and each edge renders.

After TigerBeetle's result codes and Stripe's error objects: one machine ``code``
(:class:`~comptroller.domain.codes.Code`), the ``rule`` that applied (a layer of
DESIGN.md rules 5 and 6, ranked by :mod:`comptroller.domain.defenses.order`), the
``detector`` inside that rule, the ``level`` and ``scope`` that refused, seconds
until waiting could help, the ``evidence`` seen (JSON scalars), and one sentence
for people that says what failed, the limit, what was seen and what to do.

Each rule answers only its own codes (:data:`RULE_CODES`); a budget
:class:`~comptroller.domain.refusals.Refusal` becomes a verdict of rule
``budgets`` with :meth:`Verdict.from_refusal`, so the engine returns one shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from comptroller.domain.codes import Code
from comptroller.domain.events import Event
from comptroller.domain.refusals import Refusal
from comptroller.domain.scopes import Level

__all__ = ["RULE_CODES", "JsonScalar", "Rule", "Verdict"]

JsonScalar = str | int | float | bool | None
"""A value of a verdict's evidence: what a JSON log line or an HTTP error body can carry."""


class Rule(StrEnum):
    """The admission rules, in the fixed order of checks (see :mod:`.order`)."""

    KILL_SWITCH = "kill_switch"
    PINNING = "pinning"
    DEADLINE = "deadline"
    DISPATCH = "dispatch"
    LOOP = "loop"
    BREAKER = "breaker"
    FAN_OUT = "fan_out"
    PACING = "pacing"
    RATE_LIMIT = "rate_limit"
    QUOTA = "quota"
    WALLET = "wallet"
    BUDGETS = "budgets"


RULE_CODES: Mapping[Rule, frozenset[Code]] = {
    Rule.KILL_SWITCH: frozenset({Code.KILL_SWITCH}),
    Rule.PINNING: frozenset({Code.MODEL_NOT_ALLOWED}),
    Rule.DEADLINE: frozenset({Code.DEADLINE_EXCEEDED, Code.UNKNOWN_RUN}),
    Rule.DISPATCH: frozenset({Code.NOT_DISPATCHED}),
    Rule.LOOP: frozenset({Code.RETRY_LIMIT, Code.LOOP_DETECTED}),
    Rule.BREAKER: frozenset({Code.CIRCUIT_OPEN}),
    Rule.FAN_OUT: frozenset({Code.FAN_OUT_EXCEEDED}),
    Rule.PACING: frozenset({Code.PACE_EXCEEDED}),
    Rule.RATE_LIMIT: frozenset({Code.RATE_LIMITED}),
    Rule.QUOTA: frozenset({Code.QUOTA_EXCEEDED}),
    Rule.WALLET: frozenset({Code.INSUFFICIENT_FUNDS}),
    Rule.BUDGETS: frozenset({Code.BUDGET_EXCEEDED}),
}
"""The codes each rule may answer."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A refusal by one defense.

    Attributes:
        code: the result code (one of ``RULE_CODES[rule]``).
        rule: the rule that refused.
        detector: which check inside the rule fired, e.g. ``same_request``,
            ``ab_alternation``, ``open``, ``manual``, ``not_pinned``.
        level: the level that refused (None only when no level applies).
        scope: the scope key that refused (see :mod:`comptroller.domain.scopes`), or
            a run id for deadlines.
        message: one sentence for people: what failed, which limit and its value,
            what was seen, what to do.
        retry_after_s: seconds until waiting could help (>= 0), or None when
            waiting alone never helps (an admin must act, or the request must change).
        evidence: the numbers and ids seen, JSON scalars (mc, s, ISO-8601 UTC strings).

    Raises:
        ValueError: if ``code`` is not one of the rule's codes, or ``retry_after_s`` is negative.
    """

    code: Code
    rule: Rule
    detector: str
    level: Level | None
    scope: str
    message: str
    retry_after_s: float | None = None
    evidence: Mapping[str, JsonScalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in RULE_CODES[self.rule]:
            allowed = ", ".join(sorted(RULE_CODES[self.rule]))
            raise ValueError(f"rule {self.rule} answers {allowed}, not {self.code}")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0 seconds, got {self.retry_after_s!r}")

    def event(self, ts: datetime, **context: JsonScalar) -> Event:
        """The ``refusal`` event to append to the ledger (the owner is told through it).

        Args:
            ts: when the call was refused (aware UTC).
            **context: extra JSON scalars for the event detail (agent, model, ...).
        """
        detail: dict[str, JsonScalar] = {
            "rule": str(self.rule), "detector": self.detector, "message": self.message,
            "retry_after_s": self.retry_after_s, **self.evidence, **context,
        }
        level = None if self.level is None else str(self.level)
        return Event(ts=ts, kind="refusal", code=str(self.code), level=level, scope=self.scope,
                     detail=detail)

    @classmethod
    def from_refusal(cls, refusal: Refusal) -> Verdict:
        """Wrap a budget :class:`Refusal` (rule ``budgets``, the last in the order of checks)."""
        return cls(
            code=refusal.code, rule=Rule.BUDGETS, detector="budget", level=refusal.level,
            scope=refusal.scope, message=refusal.message, retry_after_s=refusal.retry_after_s,
            evidence={
                "budget_id": refusal.budget_id, "limit_mc": refusal.limit_mc,
                "settled_mc": refusal.settled_mc, "reserved_mc": refusal.reserved_mc,
                "requested_mc": refusal.requested_mc, "remaining_mc": refusal.remaining_mc,
            },
        )
