"""The SDK's refusals: one exception per code, each carrying the engine's verdict.

::

    RefusedError                       any refusal; .code, .level, .verdict, .retry_after_s
    ├── BudgetExceededError            budget_exceeded
    ├── CircuitOpenError               circuit_open
    ├── LoopDetectedError              loop_detected
    ├── RetryLimitError                retry_limit
    ├── PaceExceededError              pace_exceeded
    ├── KillSwitchError                kill_switch
    ├── ModelNotAllowedError           model_not_allowed
    ├── DeadlineExceededError          deadline_exceeded
    ├── RateLimitedError               rate_limited
    ├── QuotaExceededError             quota_exceeded
    └── InsufficientFundsError         insufficient_funds
    UnmeteredCallError                 a client method the SDK cannot meter (nothing was sent)

The refusals are the gateway's HTTP 429 / 503 bodies as Python values: the same code,
the same level (the gateway's ``param``), the same message. :class:`UnmeteredCallError`
is not a refusal of the engine: it is the wrapper failing closed on a method that could
cost money and that it does not meter (DESIGN.md rule 11).
"""

from __future__ import annotations

from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Verdict

__all__ = [
    "BudgetExceededError",
    "CircuitOpenError",
    "DeadlineExceededError",
    "InsufficientFundsError",
    "KillSwitchError",
    "LoopDetectedError",
    "ModelNotAllowedError",
    "PaceExceededError",
    "QuotaExceededError",
    "RateLimitedError",
    "RefusedError",
    "RetryLimitError",
    "UnmeteredCallError",
    "refused",
]


class RefusedError(Exception):
    """The engine refused the call before it reached the provider; nothing was charged.

    Attributes:
        verdict: the engine's verdict (code, rule, detector, level, scope, message, evidence).
        code: the result code, e.g. ``budget_exceeded``.
        level: the level that refused (``agent``, ``conversation``...), or None.
        retry_after_s: seconds until waiting could help, or None when it never does.
    """

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict
        self.code = verdict.code
        self.level = None if verdict.level is None else str(verdict.level)
        self.retry_after_s = verdict.retry_after_s


class BudgetExceededError(RefusedError):
    """A budget has too little left for the call's ceiling."""


class CircuitOpenError(RefusedError):
    """The spend-rate breaker of the agent or conversation is open."""


class LoopDetectedError(RefusedError):
    """A loop detector fired: the same request, A-B-A-B, or a near-duplicate."""


class RetryLimitError(RefusedError):
    """The task has used its re-attempts for the day."""


class PaceExceededError(RefusedError):
    """A period budget is being spent faster than the period passes."""


class KillSwitchError(RefusedError):
    """A kill switch is tripped; an admin must reset it."""


class ModelNotAllowedError(RefusedError):
    """The agent may not use this model."""


class DeadlineExceededError(RefusedError):
    """The scheduled run is past its maximum duration."""


class RateLimitedError(RefusedError):
    """An RPM or TPM limit of the key, tenant or agent has no room now; ``verdict.retry_after_s`` says when."""


class QuotaExceededError(RefusedError):
    """A token or message quota has no room for the call (``verdict.evidence``: unit, limit, used, held)."""


class InsufficientFundsError(RefusedError):
    """The agent's prepaid wallet would go below its floor; top it up (``comptroller wallet transfer``)."""


class UnmeteredCallError(Exception):
    """A wrapped client's method that may cost money and is not metered; nothing was sent.

    Attributes:
        method: the method's dotted name on the client, e.g. ``images.generate``; pass it in
            ``Comptroller.wrap(client, allow_unmetered={...})`` to let it through unmetered.
        reason: why it is not metered.
    """

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"{method}: {reason}. Nothing was sent. To call it anyway, unmetered (its cost will not "
                         f"count against any budget), wrap the client with allow_unmetered={{{method!r}}}")
        self.method = method
        self.reason = reason


_BY_CODE: dict[Code, type[RefusedError]] = {
    Code.BUDGET_EXCEEDED: BudgetExceededError, Code.CIRCUIT_OPEN: CircuitOpenError,
    Code.LOOP_DETECTED: LoopDetectedError,
    Code.RETRY_LIMIT: RetryLimitError, Code.PACE_EXCEEDED: PaceExceededError, Code.KILL_SWITCH: KillSwitchError,
    Code.MODEL_NOT_ALLOWED: ModelNotAllowedError, Code.DEADLINE_EXCEEDED: DeadlineExceededError,
    Code.RATE_LIMITED: RateLimitedError, Code.QUOTA_EXCEEDED: QuotaExceededError,
    Code.INSUFFICIENT_FUNDS: InsufficientFundsError,
}


def refused(verdict: Verdict) -> RefusedError:
    """The exception for a verdict (its code's subclass, else :class:`RefusedError`)."""
    return _BY_CODE.get(verdict.code, RefusedError)(verdict)
