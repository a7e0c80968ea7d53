"""The fixed order of admission checks, so a refusal always carries the first rule that applies.

Item 8 of the runaway-protection issue; after TigerBeetle, whose result codes have a fixed
precedence. The engine runs the checks in this order, stops at the first refusal,
and commits the state changes of the checks that passed (a loop history entry, a
retry attempt, a breaker probe lease) only when the whole call is admitted, in the
same transaction as the reservation:

====  ==============  =============================================  ===============================
rank  rule            why here                                        codes
====  ==============  =============================================  ===============================
1     kill_switch     an emergency stop overrides everything          ``kill_switch``
2     pinning         a forbidden model is a request error; routing  ``model_not_allowed``
                      fixes the model every later check prices
3     deadline        a run past its deadline must end, whatever     ``deadline_exceeded``
                      else holds
4     dispatch        a strict group's member answers only a         ``not_dispatched``
                      message it was dispatched for (structural:
                      before any state a call could consume)
5     loop            re-attempts per day, then the detectors:       ``retry_limit``,
                      refuse the repeat before it is paid             ``loop_detected``
6     breaker         the spend rate of the agent and conversation   ``circuit_open``
7     fan_out         live reservations of the task, conversation    ``fan_out_exceeded``
                      or agent below ``max_in_flight``
8     pacing          the long-term rate of period budgets; may      ``pace_exceeded``
                      downgrade the model before budgets price it
9     rate_limit      RPM/TPM of the key, tenant, agent (GCRA)       ``rate_limited``
10    quota           token and message quotas hold the ceiling      ``quota_exceeded``
11    wallet          a prepaid agent's wallet stays above its floor ``insufficient_funds``
12    budgets         every applicable budget holds the ceiling      ``budget_exceeded``
====  ==============  =============================================  ===============================

Stateless and cheap checks come first; stateful ones (loop, breaker) come after
every check that could refuse for a reason waiting cannot fix, so a call refused
by the kill switch or a deadline never consumes a retry or a probe lease.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from comptroller.domain.defenses.verdict import Rule, Verdict

__all__ = ["CHECK_ORDER", "first_refusal", "rank"]

CHECK_ORDER: tuple[Rule, ...] = (
    Rule.KILL_SWITCH,
    Rule.PINNING,
    Rule.DEADLINE,
    Rule.DISPATCH,
    Rule.LOOP,
    Rule.BREAKER,
    Rule.FAN_OUT,
    Rule.PACING,
    Rule.RATE_LIMIT,
    Rule.QUOTA,
    Rule.WALLET,
    Rule.BUDGETS,
)
_RANK: Mapping[Rule, int] = {rule: i for i, rule in enumerate(CHECK_ORDER, start=1)}


def rank(rule: Rule) -> int:
    """The 1-based position of ``rule`` in :data:`CHECK_ORDER`."""
    return _RANK[rule]


def first_refusal(verdicts: Iterable[Verdict | None]) -> Verdict | None:
    """The refusal of the earliest rule among ``verdicts`` (None entries are passes).

    For callers that evaluate several checks before choosing (replay's what-if,
    reports); ties keep the first given. The engine itself stops at the first.
    """
    found = [v for v in verdicts if v is not None]
    return min(found, key=lambda v: _RANK[v.rule], default=None)
