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
