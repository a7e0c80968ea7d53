"""When an unverified action is checked again: exponential backoff within a horizon (issue 17, "verified done").

An action the agent says it published is ``unverified`` until a verifier confirms it. Its row holds
``verify_next_at``, the time its next check is due, so the schedule is durable: any gateway worker
sharing the ledger, or one started after a crash, finds due actions in the ledger and checks them
(:meth:`comptroller.engine.actions.ActionService.reverify_due`).

After the ``n``-th failed check the next one waits ``min(backoff_s_start * 2 ** (n - 1), backoff_s_max)``
seconds (30 s, 60 s, 120 s ... 900 s with the defaults). Re-checking stops ``VERIFY_HORIZON_S`` after
the outcome was recorded (a post missing a day after a 200 is not coming); the action then stays
``unverified`` for good (never ``done`` by default), and ``comptroller action verify`` can still re-check it.
The check count that raises the ``action/unverified`` event is the rules' ``attempts``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from comptroller.domain.actions.rules import Verification

__all__ = ["VERIFY_HORIZON_S", "backoff_s", "next_check_at"]

VERIFY_HORIZON_S = 86_400.0
"""How long after its outcome an unverified action is re-checked, seconds (one day: 96 checks at most with
the defaults' 900 s cap)."""


def backoff_s(spec: Verification, checks: int) -> float:
    """The wait after ``checks`` failed checks (>= 1), seconds: doubling from ``backoff_s_start``, capped."""
    exponent = min(max(checks, 1) - 1, 62)  # 2 ** 62 s is past any cap; no overflow into a float infinity
    return float(min(spec.backoff_s_start * 2 ** exponent, spec.backoff_s_max))


def next_check_at(spec: Verification, checks: int, published_at: datetime, now: datetime) -> datetime | None:
    """When to check again after ``checks`` failed checks at ``now``; None once past the horizon.

    Args:
        spec: the platform's verification rules.
        checks: failed checks so far (>= 1).
        published_at: when the outcome was recorded (aware UTC).
        now: the time of the last check (aware UTC).
    """
    at = now + timedelta(seconds=backoff_s(spec, checks))
    return None if at > published_at + timedelta(seconds=VERIFY_HORIZON_S) else at
