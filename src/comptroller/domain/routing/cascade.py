"""Cascades: ordered tiers, cheap first; the plan of attempts and the escalation decision.

DESIGN.md rule 7 (L54 "Scaling Agents"; "Multi-Agent Mesh Economics"): tiers run
from local models through mid-tier to frontier APIs; a tier's answer is returned only
if every gate of the tier passes, else the cascade escalates. "Escalate after two
failures" is ``attempts_max = 2``.

* :func:`plan` lists the attempts a request may make, in order: each tier from the
  routed start tier, ``attempts_max`` attempts per tier, rotating over the tier's
  equivalent models; models the agent's pin forbids are dropped first (pinning always
  wins, :mod:`comptroller.domain.defenses.pinning`), and a tier left without a model
  is passed over with that reason.
* :func:`decide` turns one attempt's gate results into :class:`Decision`: accept, or
  pass over (the next planned attempt is the retry or the escalation).

Money and calls are the edge's job (:mod:`comptroller.routing.runner`): each planned
attempt is its own admit -> call -> settle/release.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from comptroller.domain.routing.errors import RoutingConfigError
from comptroller.domain.routing.gates import Answer, Gate, GateResult, run_gates

__all__ = ["Cascade", "Decision", "PassOver", "Plan", "PlannedAttempt", "Tier", "decide", "plan"]

_MAX_ATTEMPTS_PER_TIER = 5
_MAX_TIERS = 8


@dataclass(frozen=True, slots=True)
class Tier:
    """One step of a cascade.

    Attributes:
        name: the tier's label (``local``, ``mid``, ``frontier``), unique in its cascade.
        models: equivalent model ids; attempt ``k`` (1-based) uses ``models[(k - 1) % len(models)]``.
        attempts_max: attempts before escalating (1..5; default 1).
        gates: checks an answer must pass to be returned from this tier.

    Raises:
        RoutingConfigError: on an empty name, no models, or attempts_max outside 1..5.
    """

    name: str
    models: tuple[str, ...]
    attempts_max: int = 1
    gates: tuple[Gate, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "gates", tuple(self.gates))
        if not self.name.strip():
            raise RoutingConfigError("a tier needs a non-blank name such as \"local\" or \"frontier\"")
        if not self.models or any(not m.strip() for m in self.models):
            raise RoutingConfigError(f"tier {self.name!r} needs at least one model: models = [\"gpt-4o-mini\"]")
        if not 1 <= self.attempts_max <= _MAX_ATTEMPTS_PER_TIER:
            raise RoutingConfigError(f"tier {self.name!r}: attempts_max must be in 1..{_MAX_ATTEMPTS_PER_TIER}, "
                                     f"got {self.attempts_max}")


@dataclass(frozen=True, slots=True)
class Cascade:
    """Tiers tried cheapest first.

    Raises:
        RoutingConfigError: with no tiers, more than 8, or two tiers of one name.
    """

    name: str
    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiers", tuple(self.tiers))
        if not self.tiers:
            raise RoutingConfigError(f"cascade {self.name!r} has no tiers; add [[cascades.{self.name}.tiers]] "
                                     "with a name and models, cheapest first")
        if len(self.tiers) > _MAX_TIERS:
            raise RoutingConfigError(f"cascade {self.name!r} has {len(self.tiers)} tiers; at most {_MAX_TIERS}")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise RoutingConfigError(f"cascade {self.name!r} repeats a tier name: {names}; names must be unique")

    def tier_index(self, name: str) -> int:
        """The position of tier ``name``. Raises RoutingConfigError naming the known tiers."""
        for i, tier in enumerate(self.tiers):
            if tier.name == name:
                return i
        raise RoutingConfigError(f"cascade {self.name!r} has no tier {name!r} (tiers: {[t.name for t in self.tiers]})")


@dataclass(frozen=True, slots=True)
class PlannedAttempt:
    """One call the cascade may make: tier ``tier`` (position ``tier_index``), attempt ``attempt`` (1-based)."""

    tier: str
    tier_index: int
    attempt: int
    model: str


@dataclass(frozen=True, slots=True)
class PassOver:
    """Why a tier attempt did not answer.

    Attributes:
        tier: the tier's name.
        model: the model tried (empty when the tier was skipped before any call).
        attempt: the attempt number within the tier (0 when skipped).
        reason: one sentence: the failed gates, the upstream error, or the pin.
    """

    tier: str
    model: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The attempts to make in order, and the tiers skipped before any call (with why)."""

    attempts: tuple[PlannedAttempt, ...]
    skipped: tuple[PassOver, ...]


def plan(cascade: Cascade, *, start_tier: int = 0, allowed: Callable[[str], bool] = lambda _m: True) -> Plan:
    """The ordered attempts of one request.

    Args:
        cascade: the cascade.
        start_tier: the first tier to use (a rule may start higher, e.g. deep mode).
        allowed: True for models the agent may use (its pin); others are never planned.

    Raises:
        ValueError: if ``start_tier`` is not a tier position.
    """
    if not 0 <= start_tier < len(cascade.tiers):
        raise ValueError(f"start tier {start_tier} is outside cascade {cascade.name!r} (0..{len(cascade.tiers) - 1})")
    attempts: list[PlannedAttempt] = []
    skipped: list[PassOver] = []
    for index in range(start_tier, len(cascade.tiers)):
        tier = cascade.tiers[index]
        models = [m for m in tier.models if allowed(m)]
        if not models:
            skipped.append(PassOver(tier.name, "", 0, f"pinning: the agent may use none of tier {tier.name!r}'s "
                                                       f"models {list(tier.models)}"))
            continue
        for k in range(1, tier.attempts_max + 1):
            attempts.append(PlannedAttempt(tier.name, index, k, models[(k - 1) % len(models)]))
    return Plan(tuple(attempts), tuple(skipped))


@dataclass(frozen=True, slots=True)
class Decision:
    """The gates' verdict on one attempt.

    Attributes:
        accept: True if the answer is returned.
        results: every gate's result.
        reason: why the attempt was passed over (the failed gates' reasons joined), or
            why it was accepted.
    """

    accept: bool
    results: tuple[GateResult, ...]
    reason: str


def decide(gates: Sequence[Gate], answer: Answer) -> Decision:
    """Accept ``answer`` iff every gate passes; otherwise say which gates failed and why."""
    results = run_gates(gates, answer)
    failed = [r.reason for r in results if not r.passed]
    if failed:
        return Decision(False, results, "; ".join(failed))
    passed = ", ".join(r.gate for r in results)
    return Decision(True, results, f"passed gates {passed}" if passed else "the tier has no gates")
