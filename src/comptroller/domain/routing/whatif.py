"""What-if model mapping: which model a recorded call would have used under another routing (cost only).

Issue 5, item 7: re-price recorded traffic under another model mapping, per agent, per
phase, or per model (a tier's models), clearly labelled as cost-only: the tokens are the
recorded ones, so the answer quality and length of the other model are *not* simulated.

Precedence: an agent's mapping, then the phase's, then the model's; a call none applies
to keeps its model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from comptroller.domain.routing.errors import RoutingConfigError

__all__ = ["COST_ONLY_NOTE", "ModelMapping"]

COST_ONLY_NOTE = ("cost only: recorded token counts re-priced under the mapped models; the other models' answers, "
                  "their lengths and their quality are not simulated")


@dataclass(frozen=True, slots=True)
class ModelMapping:
    """Target models by agent, by phase and by model.

    Raises:
        RoutingConfigError: on an empty key or target.
    """

    by_agent: Mapping[str, str] = field(default_factory=dict)
    by_phase: Mapping[str, str] = field(default_factory=dict)
    by_model: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, table in (("agent", self.by_agent), ("phase", self.by_phase), ("model", self.by_model)):
            for key, target in table.items():
                if not key.strip() or not target.strip():
                    raise RoutingConfigError(f"a what-if mapping by {kind} needs NAME=MODEL, got {key!r}={target!r}")

    def target(self, *, agent: str, phase: str | None, model: str) -> tuple[str, str]:
        """``(model to price as, why)`` for one recorded call."""
        if agent in self.by_agent:
            return self.by_agent[agent], f"agent {agent!r}"
        if phase is not None and phase in self.by_phase:
            return self.by_phase[phase], f"phase {phase!r}"
        if model in self.by_model:
            return self.by_model[model], f"model {model!r}"
        return model, "unchanged"
