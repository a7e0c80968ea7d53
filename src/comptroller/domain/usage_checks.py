"""Checks of a provider's reported usage against the bounds the call was admitted with.

A provider bills what it reports, so usage above a bound is charged in full; but it means
either our bound was wrong (an input the bound missed) or the provider ignored the output
cap we sent (issue 11, item 4). Each such case is an :class:`UsageAnomaly` for the edge to
record as an event, a metric and a row of the report's ceiling-miss table.

The served model is checked too: providers answer a dated snapshot for an alias
(``gpt-4o`` -> ``gpt-4o-2024-08-06``, ``claude-sonnet-4-5`` -> ``claude-sonnet-4-5-20250929``),
which is the same model; anything else is a :class:`ModelMismatch`, and the call settles at
the price of the model actually served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from comptroller.domain.usage import Usage

__all__ = ["ModelMismatch", "UsageAnomaly", "UsageBucket", "check_served_model", "check_usage"]

UsageBucket = Literal["input_tokens", "output_tokens"]


@dataclass(frozen=True, slots=True)
class UsageAnomaly:
    """A reported token count above the bound the call was admitted with.

    Attributes:
        bucket: ``"input_tokens"`` (all input, cache reads and writes included) or
            ``"output_tokens"`` (reasoning included).
        bound_tokens: the bound: the input bound reserved, or the output cap sent upstream
            (times ``n`` for ``n > 1``).
        reported_tokens: what the provider reported (and bills).
    """

    bucket: UsageBucket
    bound_tokens: int
    reported_tokens: int

    @property
    def code(self) -> str:
        """A machine code for events and metrics: ``input_above_bound`` or ``output_above_bound``."""
        return "input_above_bound" if self.bucket == "input_tokens" else "output_above_bound"

    @property
    def excess_tokens(self) -> int:
        """Reported tokens above the bound (always >= 1)."""
        return self.reported_tokens - self.bound_tokens

    def describe(self) -> str:
        """One line for logs and events."""
        return (f"reported {self.bucket} {self.reported_tokens} exceed the bound {self.bound_tokens} "
                f"by {self.excess_tokens}")


def check_usage(usage: Usage, *, input_tokens_max: int, output_tokens_max: int) -> tuple[UsageAnomaly, ...]:
    """The anomalies of a reported usage against the call's bounds.

    Args:
        usage: the provider's usage, normalised (:class:`comptroller.domain.usage.Usage`;
            ``input_tokens`` includes cache reads and writes).
        input_tokens_max: the input bound the call was admitted with (tokens).
        output_tokens_max: the output bound sent upstream (``max_tokens`` or its equivalent,
            times ``n`` for ``n > 1``; for a batch line, that line's bound).

    Returns:
        One anomaly per bucket above its bound, input first; empty when usage is within both.

    Raises:
        ValueError: for a negative bound.
    """
    if input_tokens_max < 0 or output_tokens_max < 0:
        raise ValueError(f"bounds must be >= 0 tokens, got input {input_tokens_max}, output {output_tokens_max}")
    anomalies: list[UsageAnomaly] = []
    if usage.input_tokens > input_tokens_max:
        anomalies.append(UsageAnomaly("input_tokens", input_tokens_max, usage.input_tokens))
    if usage.output_tokens > output_tokens_max:
        anomalies.append(UsageAnomaly("output_tokens", output_tokens_max, usage.output_tokens))
    return tuple(anomalies)


@dataclass(frozen=True, slots=True)
class ModelMismatch:
    """The provider served another model than the one admitted.

    Attributes:
        admitted_model: the model the call was admitted (and priced) for.
        served_model: the ``model`` of the provider's response.
    """

    admitted_model: str
    served_model: str


# A dated snapshot suffix: -2024-08-06 (OpenAI), -20250929 (Anthropic), -0613 (older OpenAI).
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01]))")


def check_served_model(admitted_model: str, served_model: str | None) -> ModelMismatch | None:
    """Whether the served model differs from the admitted one.

    The same model is: equal names (case-insensitive), or the admitted name followed by a dated
    snapshot suffix (``-2024-08-06``, ``-20250929``, ``-0613``), the form OpenAI and Anthropic
    answer for an alias. A missing ``model`` in the response is not a mismatch (nothing to
    price differently).

    Returns:
        None when they are the same model, else the mismatch.
    """
    if not served_model:
        return None
    admitted, served = admitted_model.lower(), served_model.lower()
    if served == admitted:
        return None
    if served.startswith(admitted) and _SNAPSHOT.fullmatch(served[len(admitted):]):
        return None
    return ModelMismatch(admitted_model=admitted_model, served_model=served_model)
