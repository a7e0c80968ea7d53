"""Result codes: business outcomes are values, not exceptions.

After TigerBeetle's result codes: every ledger operation answers one code. A
refusal carries the first code that applies in the fixed order of checks, and the
level that refused. Edges render codes (an HTTP 429 body, an SDK exception); they
never invent their own.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Code"]


class Code(StrEnum):
    """Every outcome of reserve, settle and release."""

    # reserve
    OK = "ok"
    ALREADY_RESERVED = "already_reserved"
    """The idempotency key was used before with the same request: the first answer stands."""
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    """The idempotency key was used before with a different request."""
    BUDGET_EXCEEDED = "budget_exceeded"
    # settle
    SETTLED = "settled"
    SETTLED_LATE = "settled_late"
    """Settled after the lease expired or was released: the cost is recorded anyway."""
    ALREADY_SETTLED = "already_settled"
    # release
    RELEASED = "released"
    ALREADY_RELEASED = "already_released"
    # settle or release of an id the ledger never saw
    RESERVATION_NOT_FOUND = "reservation_not_found"
    # admission defenses (DESIGN.md rules 5 and 6; fixed order in comptroller.domain.defenses.order)
    CIRCUIT_OPEN = "circuit_open"
    """The spend-rate breaker of the agent or conversation is open (or half-open with its probe out)."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNKNOWN_RUN = "unknown_run"
    """The call names a scheduled run that was never opened for its tenant (open it first: ``POST /v1/runs``)."""
    """The scheduled run (heartbeat, cron job) the call belongs to is past its maximum duration."""
    LOOP_DETECTED = "loop_detected"
    """A loop detector fired before the repeated call was paid: same request, A-B-A-B, near-duplicate."""
    RETRY_LIMIT = "retry_limit"
    """The task has used its re-attempts for this UTC day."""
    KILL_SWITCH = "kill_switch"
    """The kill switch of the namespace (or another scope) is tripped; an admin must reset it."""
    MODEL_NOT_ALLOWED = "model_not_allowed"
    """The model is not among the agent's allowed models, or no fallback may take its place."""
    NOT_DISPATCHED = "not_dispatched"
    """A strict group's member called in its conversation without being dispatched for the message it answers."""
    FAN_OUT_EXCEEDED = "fan_out_exceeded"
    """The task, conversation or agent already has ``max_in_flight`` calls in flight (live reservations)."""
    PACE_EXCEEDED = "pace_exceeded"
    """A period budget is being spent faster than the period passes, beyond slack and burst."""
    RATE_LIMITED = "rate_limited"
    """An RPM or TPM limit of the key, tenant or agent has no room now (:mod:`comptroller.domain.rate_limits`)."""
    QUOTA_EXCEEDED = "quota_exceeded"
    """A quota in tokens or messages has no room for the call's ceiling (:mod:`comptroller.domain.quotas`)."""
    INSUFFICIENT_FUNDS = "insufficient_funds"
    """The agent's prepaid wallet would go below its floor (:mod:`comptroller.domain.wallets.floors`)."""
