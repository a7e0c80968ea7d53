"""Routing, pure: cascades and tiers, gates, the escalation decision, the rule router, break-even.

DESIGN.md rule 7. No I/O and no clock here; :mod:`comptroller.routing` runs a cascade
through the engine (each tier attempt its own reservation) and loads configuration.
"""

from comptroller.domain.routing.cascade import Cascade, Decision, PassOver, Plan, PlannedAttempt, Tier, decide, plan
from comptroller.domain.routing.errors import RoutingConfigError
from comptroller.domain.routing.gates import (
    Answer,
    ConfidenceGate,
    CustomGate,
    Gate,
    GateResult,
    JsonSchemaGate,
    NonEmptyGate,
)
from comptroller.domain.routing.numeric_gates import (
    AnswerLengthGate,
    ArithmeticGate,
    FinalAgreesGate,
    FinalNumberGate,
    QuestionNumbersGate,
)
from comptroller.domain.routing.rules import RouteDecision, RouteFacts, Router, RoutingRule, check_pinning

__all__ = [
    "Answer",
    "AnswerLengthGate",
    "ArithmeticGate",
    "Cascade",
    "ConfidenceGate",
    "CustomGate",
    "Decision",
    "FinalAgreesGate",
    "FinalNumberGate",
    "Gate",
    "GateResult",
    "JsonSchemaGate",
    "NonEmptyGate",
    "PassOver",
    "Plan",
    "PlannedAttempt",
    "QuestionNumbersGate",
    "RouteDecision",
    "RouteFacts",
    "Router",
    "RoutingConfigError",
    "RoutingRule",
    "Tier",
    "check_pinning",
    "decide",
    "plan",
]
