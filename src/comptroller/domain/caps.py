"""The per-turn output cap: every ceiling is finite (DESIGN.md rule 4, after KinthAI and "221 agents").

The output bound of a call is, in order:

1. the requested ``max_tokens``, lowered to the agent's cap (or the default cap)
   when it asks for more;
2. with no request: the agent's cap, else the default cap;
3. with neither: the model's maximum output (``max_output_tokens`` when the
   price book knows it, else ``context_window - input_tokens_max``, the rule
   OpenAI's completion APIs apply and ChatDev requests).

The gateway sends the capped value upstream, so the reserved ceiling stays a
true bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from comptroller.domain.pricing import ModelPrice

__all__ = ["NoOutputCapError", "OutputCaps"]


class NoOutputCapError(ValueError):
    """No bound on output tokens could be found for a call."""


@dataclass(frozen=True, slots=True)
class OutputCaps:
    """Configured caps, tokens.

    Attributes:
        default_tokens: the cap for agents without their own (None: no default).
        by_agent: agent name -> cap.

    Raises:
        ValueError: on a cap < 1.
    """

    default_tokens: int | None = None
    by_agent: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        caps = [("default", self.default_tokens), *self.by_agent.items()]
        for name, cap in caps:
            if cap is not None and (type(cap) is not int or cap < 1):
                raise ValueError(f"output cap for {name} must be an integer >= 1 token, got {cap!r}")

    def cap_for(self, agent: str) -> int | None:
        """The configured cap for an agent, or None."""
        return self.by_agent.get(agent, self.default_tokens)

    def output_tokens_max(self, *, agent: str, requested: int | None, price: ModelPrice,
                          input_tokens_max: int) -> int:
        """The output bound for one call (see the module docstring).

        Raises:
            NoOutputCapError: when nothing bounds the output.
            ValueError: on a negative request.
        """
        if requested is not None and requested < 0:
            raise ValueError(f"max_tokens must be >= 0, got {requested}")
        cap = self.cap_for(agent)
        if requested is not None:
            return requested if cap is None else min(requested, cap)
        if cap is not None:
            return cap
        if price.max_output_tokens is not None:
            return price.max_output_tokens
        if price.context_window is not None and price.context_window > input_tokens_max:
            return price.context_window - input_tokens_max
        raise NoOutputCapError(
            f"no output cap for agent {agent!r} on model {price.model!r}: the request has no max_tokens, "
            "no cap is configured and the model's maximum output is unknown; set output_cap_tokens "
            "in the policy (or output_caps for the agent)"
        )
