"""Gates: deterministic checks on a tier's answer that decide whether the cascade escalates.

DESIGN.md rule 7 (after L54 "Scaling Agents" and "Multi-Agent Mesh Economics"):
escalate on a deterministic signal, a JSON-schema validator as the hard gate and
self-reported confidence as a soft one. Every gate is a value with a ``name`` and a
``check(answer) -> GateResult``; a failed result says why in one sentence, which the
cascade records as the reason the tier was passed over.

Gates here (config ``kind`` in brackets):

* :class:`NonEmptyGate` [``non_empty``]: the text is not blank and the provider's
  ``finish_reason`` is an accepted one (default ``stop``; ``length`` means truncated).
* :class:`JsonSchemaGate` [``json_schema``]: the text is JSON valid against the
  cascade's schema, else the request's ``response_format`` schema, else only JSON
  (OpenAI's ``json_object`` mode). Schemas are checked when the gate is built (the
  ``jsonschema`` library, draft chosen by ``$schema``, default 2020-12).
* :class:`ConfidenceGate` [``confidence``]: a numeric field of the JSON answer
  (a dotted path) is at least the tier's threshold.
* :class:`CustomGate` [``custom``]: any callable ``(Answer) -> bool | GateResult``
  (config: ``callable = "package.module:function"``, resolved at start-up).

Gates for answers that end in a number (math, counting, pricing) are in
:mod:`comptroller.domain.routing.numeric_gates`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for

from comptroller.domain.routing.errors import RoutingConfigError

__all__ = [
    "Answer",
    "ConfidenceGate",
    "CustomGate",
    "Gate",
    "GateResult",
    "JsonSchemaGate",
    "NonEmptyGate",
    "compile_schema",
    "run_gates",
]


@dataclass(frozen=True, slots=True)
class Answer:
    """What a gate sees of one tier attempt.

    Attributes:
        text: the answer's text (the assistant message content).
        finish_reason: the provider's finish reason (``stop``, ``length``, ...), None if unknown.
        prompt: the request's last user message (for gates that compare with it).
        response_schema: the JSON schema of the request's ``response_format``, if any.
    """

    text: str
    finish_reason: str | None = "stop"
    prompt: str = ""
    response_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's verdict on one answer.

    Attributes:
        gate: the gate's name.
        passed: True if the answer may be returned.
        reason: why it failed (one sentence naming the gate and what it saw); empty if passed.
    """

    gate: str
    passed: bool
    reason: str = ""


class Gate(Protocol):
    """A deterministic check on an answer."""

    @property
    def name(self) -> str:
        """The gate's name, as reports and reasons show it."""
        ...

    def check(self, answer: Answer) -> GateResult:
        """Pass or fail ``answer``, saying why on failure."""
        ...


def run_gates(gates: Sequence[Gate], answer: Answer) -> tuple[GateResult, ...]:
    """Every gate's result on ``answer``, in order (all run, so reports see each gate's view)."""
    return tuple(gate.check(answer) for gate in gates)


@dataclass(frozen=True, slots=True)
class NonEmptyGate:
    """The answer has text and finished for an accepted reason.

    Attributes:
        finish_reasons: accepted ``finish_reason`` values (OpenAI: ``stop``; ``length``
            means the output was cut at ``max_tokens``). An unknown (None) reason passes.
    """

    finish_reasons: tuple[str, ...] = ("stop",)
    name: str = "non_empty"

    def check(self, answer: Answer) -> GateResult:
        """Fail a blank answer or one that stopped for a reason not in ``finish_reasons``."""
        if not answer.text.strip():
            return GateResult(self.name, False, "non_empty: the answer is empty")
        if answer.finish_reason is not None and answer.finish_reason not in self.finish_reasons:
            return GateResult(self.name, False, f"non_empty: finish_reason {answer.finish_reason!r} is not one of "
                                                f"{list(self.finish_reasons)} (a truncated or filtered answer)")
        return GateResult(self.name, True)


def compile_schema(schema: Mapping[str, Any], *, where: str) -> jsonschema.protocols.Validator:
    """A validator for ``schema``, checked against its meta-schema (draft from ``$schema``, default 2020-12).

    Raises:
        RoutingConfigError: naming ``where`` and the schema's first error.
    """
    document = dict(schema)
    cls = validator_for(document, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(document)
    except SchemaError as exc:
        path = "/".join(map(str, exc.path)) or "(root)"
        raise RoutingConfigError(f"{where}: the JSON schema does not compile at {path}: {exc.message}; "
                                 "fix it (see https://json-schema.org/understanding-json-schema/)") from None
    return cls(document)


def _parse_json(text: str) -> tuple[Any, str]:
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"


@dataclass(frozen=True, slots=True)
class JsonSchemaGate:
    """The answer is JSON valid against a schema.

    Args:
        schema: the cascade's schema; None uses the request's ``response_format`` schema,
            and with neither the gate checks only that the text is JSON.

    Raises:
        RoutingConfigError: if ``schema`` does not compile.
    """

    schema: Mapping[str, Any] | None = None
    name: str = "json_schema"
    _validator: jsonschema.protocols.Validator | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.schema is not None:
            object.__setattr__(self, "_validator", compile_schema(self.schema, where=f"gate {self.name!r}"))

    def check(self, answer: Answer) -> GateResult:
        """Fail text that is not JSON, or JSON the schema rejects (naming the first error's path)."""
        document, problem = _parse_json(answer.text)
        if problem:
            return GateResult(self.name, False, f"json_schema: the answer is {problem}")
        validator = self._validator
        if validator is None and answer.response_schema is not None:
            try:
                validator = compile_schema(answer.response_schema, where="the request's response_format")
            except RoutingConfigError as exc:
                return GateResult(self.name, False, f"json_schema: {exc}")
        if validator is None:
            return GateResult(self.name, True)
        error = best_match(validator.iter_errors(document))
        if error is None:
            return GateResult(self.name, True)
        path = "/".join(map(str, error.absolute_path)) or "(root)"
        return GateResult(self.name, False, f"json_schema: the answer fails the schema at {path}: {error.message}")


def _field(document: Any, dotted: str) -> Any:
    value = document
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True, slots=True)
class ConfidenceGate:
    """A self-reported confidence in the JSON answer is at least ``threshold`` (a soft signal).

    Args:
        threshold: the lowest accepted value (the field's own scale, e.g. 0..1).
        field_path: the dotted path of the numeric field (default ``confidence``).

    Raises:
        RoutingConfigError: on an empty field path.
    """

    threshold: float
    field_path: str = "confidence"
    name: str = "confidence"

    def __post_init__(self) -> None:
        if not self.field_path or any(not p for p in self.field_path.split(".")):
            raise RoutingConfigError(f"gate {self.name!r}: field {self.field_path!r} must be a dotted path such as "
                                     "\"confidence\" or \"meta.confidence\"")

    def check(self, answer: Answer) -> GateResult:
        """Fail when the field is missing, not a number, or below the threshold."""
        document, problem = _parse_json(answer.text)
        if problem:
            return GateResult(self.name, False, f"confidence: the answer is {problem}")
        value = _field(document, self.field_path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return GateResult(self.name, False, f"confidence: field {self.field_path!r} is missing or not a number "
                                                f"(got {value!r})")
        if value < self.threshold:
            return GateResult(self.name, False, f"confidence: {self.field_path} = {value} is below the tier's "
                                                f"threshold {self.threshold}")
        return GateResult(self.name, True)


@dataclass(frozen=True, slots=True)
class CustomGate:
    """A user's check: ``func(answer)`` returns True/False or a :class:`GateResult`.

    Args:
        name: the gate's name in reasons and reports (e.g. the import path).
        func: the check; an exception it raises fails the answer, with the exception named.
    """

    name: str
    func: Callable[[Answer], bool | GateResult]

    def check(self, answer: Answer) -> GateResult:
        """Run the user's check; False or an exception fails the answer."""
        try:
            outcome = self.func(answer)
        except Exception as exc:  # a user's gate failing must not crash the call: it fails the answer
            return GateResult(self.name, False, f"{self.name}: the gate raised {type(exc).__name__}: {exc}")
        if isinstance(outcome, GateResult):
            return outcome
        return GateResult(self.name, True) if outcome else GateResult(self.name, False,
                                                                      f"{self.name}: the custom gate rejected it")
