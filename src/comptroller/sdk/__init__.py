"""The in-process SDK: wrap ``openai`` and ``anthropic`` clients so every call goes through the engine.

::

    from comptroller.sdk import Comptroller, BudgetExceededError

    comptroller = Comptroller.from_policy("policy.toml", db="sqlite:///ledger.db", tenant="acme")
    client = comptroller.wrap(openai.OpenAI(), agent="writer")
    with comptroller.scheduled_run("nightly-2026-11-21", max_duration_s=600):
        client.chat.completions.create(model="gpt-4o-mini", messages=[...])

Every method that can cost money is metered; free ones pass through; any other one raises
:class:`UnmeteredCallError` unless allowed by name (``wrap(client, allow_unmetered={"images.generate"})``).
The lists are :mod:`comptroller.sdk.catalog`.
"""

from comptroller.sdk.errors import (
    BudgetExceededError,
    CircuitOpenError,
    DeadlineExceededError,
    KillSwitchError,
    LoopDetectedError,
    ModelNotAllowedError,
    PaceExceededError,
    RefusedError,
    RetryLimitError,
    UnmeteredCallError,
)
from comptroller.sdk.governor import CallContext, Comptroller

__all__ = [
    "BudgetExceededError",
    "CallContext",
    "CircuitOpenError",
    "Comptroller",
    "DeadlineExceededError",
    "KillSwitchError",
    "LoopDetectedError",
    "ModelNotAllowedError",
    "PaceExceededError",
    "RefusedError",
    "RetryLimitError",
    "UnmeteredCallError",
]
