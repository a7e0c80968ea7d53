"""Gate tables: each gate's verdict on answers chosen to sit on either side of its rule."""

from __future__ import annotations

import json
from typing import Any

import pytest

from comptroller.domain.routing import (
    Answer,
    AnswerLengthGate,
    ArithmeticGate,
    ConfidenceGate,
    CustomGate,
    FinalAgreesGate,
    FinalNumberGate,
    GateResult,
    JsonSchemaGate,
    NonEmptyGate,
    QuestionNumbersGate,
    RoutingConfigError,
    decide,
)
from comptroller.domain.routing.arithmetic import NotArithmeticError, evaluate

SCHEMA: dict[str, Any] = {"type": "object", "required": ["answer"],
                          "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}}}


@pytest.mark.parametrize(("text", "finish", "passed"), [
    ("hello", "stop", True),
    ("   \n", "stop", False),
    ("cut off mid-sent", "length", False),
    ("content filtered", "content_filter", False),
    ("no reason given", None, True),
])
def test_non_empty_gate(text: str, finish: str | None, passed: bool) -> None:
    """Blank text or a finish reason other than stop fails; an unknown finish reason passes."""
    assert NonEmptyGate().check(Answer(text, finish)).passed is passed


@pytest.mark.parametrize(("text", "passed", "says"), [
    ('{"answer": "yes"}', True, ""),
    ('{"answer": 3}', False, "at answer"),
    ('{"other": "x"}', False, "'answer' is a required property"),
    ("not json {", False, "not valid JSON"),
    ('```json\n{"answer": "yes"}\n```', False, "not valid JSON"),
])
def test_json_schema_gate_with_the_cascade_schema(text: str, passed: bool, says: str) -> None:
    """The cascade's schema decides; the failure names the path or the JSON error."""
    result = JsonSchemaGate(SCHEMA).check(Answer(text))
    assert result.passed is passed
    assert says in result.reason


def test_json_schema_gate_falls_back_to_the_request_schema_then_to_json_only() -> None:
    """Without its own schema the gate uses the request's response_format schema, else checks JSON only."""
    gate = JsonSchemaGate()
    assert not gate.check(Answer('{"other": 1}', response_schema=SCHEMA)).passed
    assert gate.check(Answer('{"answer": "a"}', response_schema=SCHEMA)).passed
    assert gate.check(Answer('{"other": 1}')).passed
    assert not gate.check(Answer("plain text")).passed


def test_a_schema_that_does_not_compile_is_a_configuration_error() -> None:
    """A schema with a wrong keyword type fails when the gate is built, naming where."""
    with pytest.raises(RoutingConfigError, match="does not compile at properties/answer/type"):
        JsonSchemaGate({"type": "object", "properties": {"answer": {"type": "strnig"}}})


@pytest.mark.parametrize(("document", "threshold", "passed"), [
    ({"confidence": 0.9}, 0.7, True),
    ({"confidence": 0.7}, 0.7, True),
    ({"confidence": 0.69}, 0.7, False),
    ({"confidence": "high"}, 0.7, False),
    ({"confidence": True}, 0.7, False),
    ({}, 0.7, False),
])
def test_confidence_gate(document: dict[str, Any], threshold: float, passed: bool) -> None:
    """A numeric confidence at or above the threshold passes; missing, non-numeric or boolean fails."""
    assert ConfidenceGate(threshold).check(Answer(json.dumps(document))).passed is passed


def test_confidence_gate_reads_a_dotted_path() -> None:
    """The field may be nested: meta.confidence."""
    gate = ConfidenceGate(0.5, field_path="meta.confidence")
    assert gate.check(Answer('{"meta": {"confidence": 0.6}}')).passed
    assert not gate.check(Answer('{"confidence": 0.6}')).passed


def test_custom_gate_accepts_bool_result_and_turns_an_exception_into_a_failure() -> None:
    """A custom gate may return a bool or a GateResult; raising fails the answer and names the exception."""
    def boom(answer: Answer) -> bool:
        raise RuntimeError("broken check")
    assert CustomGate("has_x", lambda a: "x" in a.text).check(Answer("xyz")).passed
    assert not CustomGate("has_x", lambda a: "x" in a.text).check(Answer("abc")).passed
    detailed = CustomGate("g", lambda a: GateResult("g", False, "g: said no")).check(Answer("a"))
    assert detailed.reason == "g: said no"
    failed = CustomGate("boom", boom).check(Answer("a"))
    assert not failed.passed and "RuntimeError: broken check" in failed.reason


@pytest.mark.parametrize(("text", "passed"), [
    ("9 * 2 = 18\n#### 18", True),
    ("so $1,200 in total.\n#### $1,200", True),
    ("#### -3.5", True),
    ("The answer is 18.", False),
    ("#### eighteen", False),
    ("#### 18\nand some more words", False),
    ("", False),
])
def test_final_number_gate(text: str, passed: bool) -> None:
    """Only a last line '#### <number>' passes."""
    assert FinalNumberGate().check(Answer(text)).passed is passed


@pytest.mark.parametrize(("text", "passed"), [
    ("16 - 3 = <<16-3=13>>13 eggs, 13 - 4 = 9, 9 * $2 = $18", True),
    ("<<9*2=19>>19", False),
    ("she has 16 - 3 = 12 eggs", False),
    ("80,000 + 50,000 = 130,000", True),
    ("80,000 + 50,000 = 130,00", False),
    ("2/3 x 60 = 40 minutes", True),
    ("20% * 50 = 10", True),
    ("<<2/0=1>>", True),
])
def test_arithmetic_gate(text: str, passed: bool) -> None:
    """A wrong annotation or inline equation fails; an uncheckable one (division by zero) is no evidence."""
    assert ArithmeticGate().check(Answer(text)).passed is passed


def test_arithmetic_evaluator_refuses_anything_but_arithmetic() -> None:
    """Names, calls and huge exponents are refused, not evaluated."""
    assert evaluate("$1,200 x 2") == 2400
    for bad in ("__import__('os')", "2 ** 1000", "a + 1", "(1 + 2"):
        with pytest.raises(NotArithmeticError):
            evaluate(bad)


@pytest.mark.parametrize(("text", "passed"), [
    ("9 * 2 = 18\n#### 18", True),
    ("9 * 2 = 18\n#### 20", False),
    ("no final line", True),
])
def test_final_agrees_gate(text: str, passed: bool) -> None:
    """The final number must appear in the reasoning before it."""
    assert FinalAgreesGate().check(Answer(text)).passed is passed


def test_question_numbers_gate() -> None:
    """Every numeral of the question must be used in the answer."""
    question = "Janet's ducks lay 16 eggs. She eats 3 and bakes with 4. She sells the rest at $2."
    used_all = Answer("16 - 3 - 4 = 9; 9 * 2 = 18\n#### 18", prompt=question)
    missed = Answer("16 - 3 = 13; 13 * 2 = 26\n#### 26", prompt=question)
    assert QuestionNumbersGate().check(used_all).passed
    result = QuestionNumbersGate().check(missed)
    assert not result.passed and "4" in result.reason


def test_answer_length_gate_and_its_bound() -> None:
    """Answers longer than max_chars fail; max_chars < 1 is a configuration error."""
    assert AnswerLengthGate(5).check(Answer("12345")).passed
    assert not AnswerLengthGate(5).check(Answer("123456")).passed
    with pytest.raises(RoutingConfigError):
        AnswerLengthGate(0)


def test_decide_runs_every_gate_and_joins_the_failures() -> None:
    """decide accepts only if all gates pass, and its reason lists every failed gate."""
    gates = (NonEmptyGate(), JsonSchemaGate(SCHEMA), ConfidenceGate(0.8))
    ok = decide(gates, Answer('{"answer": "a", "confidence": 0.9}'))
    assert ok.accept and ok.reason == "passed gates non_empty, json_schema, confidence"
    bad = decide(gates, Answer('{"answer": 1, "confidence": 0.1}'))
    assert not bad.accept and len(bad.results) == 3
    assert "json_schema" in bad.reason and "confidence" in bad.reason and "non_empty" not in bad.reason
