"""Gates for answers that end in a number (math word problems, counts, totals).

Each checks the cheap answer alone, deterministically; none calls a model. Measured on
RouteLLM's GSM8K data (Mixtral-8x7B answers, ``comptroller eval-cascade``), each gate's
precision and recall at catching wrong answers are in that command's report.

* :class:`FinalNumberGate` [``final_number``]: the last line states the final answer
  after a marker (GSM8K's ``#### 18`` convention, which its few-shot prompt teaches).
  A missing line means the model was cut off or rambled.
* :class:`ArithmeticGate` [``arithmetic``]: every calculation the answer writes is right:
  calculator annotations ``<<9*2=18>>`` (GSM8K's format) and inline ``16 - 3 = 13``.
* :class:`FinalAgreesGate` [``final_agrees``]: the final number appears in the worked
  steps before it (the final line agrees with the reasoning).
* :class:`QuestionNumbersGate` [``question_numbers``]: every numeral of the question
  appears in the answer. GSM8K problems are written so the given quantities are needed
  (Cobbe et al., 2021), so an unused one suggests a misread problem; some problems
  carry distractors, so this is a soft signal.
* :class:`AnswerLengthGate` [``answer_length``]: the answer is at most ``max_chars`` long.
  Longer reasoning goes with harder problems; a soft signal whose threshold trades cost
  for accuracy (the evaluation sweeps it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from comptroller.domain.routing.arithmetic import NotArithmeticError, evaluate, numbers_in, parse_number, same_number
from comptroller.domain.routing.errors import RoutingConfigError
from comptroller.domain.routing.gates import Answer, GateResult

__all__ = [
    "AnswerLengthGate",
    "ArithmeticGate",
    "FinalAgreesGate",
    "FinalNumberGate",
    "QuestionNumbersGate",
    "final_number",
]

_NUM = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_ANNOTATION = re.compile(r"<<([^=<>]*)=([^<>]*)>>")
_OPERAND = r"\$?\(?\s*(?:" + _NUM + r")\s*\)?%?"
_INLINE = re.compile(r"((?:" + _OPERAND + r"\s*[-+*/x×÷]\s*)+" + _OPERAND + r")\s*=\s*\$?\s*(" + _NUM + r")(?![\d/])")
_DEFAULT_MARKER = "####"


def final_number(text: str, marker: str = _DEFAULT_MARKER) -> float | None:
    """The number on the answer's last non-blank line after ``marker`` (``#### $1,200`` -> 1200.0), else None."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    found = re.match(re.escape(marker) + r"\s*\$?\s*(" + _NUM + ")", lines[-1])
    return parse_number(found.group(1)) if found else None


@dataclass(frozen=True, slots=True)
class FinalNumberGate:
    """The last line is ``<marker> <number>`` (default marker ``####``).

    Raises:
        RoutingConfigError: on an empty marker.
    """

    marker: str = _DEFAULT_MARKER
    name: str = "final_number"

    def __post_init__(self) -> None:
        if not self.marker.strip():
            raise RoutingConfigError(f"gate {self.name!r}: marker must be a non-blank string such as \"####\"")

    def check(self, answer: Answer) -> GateResult:
        """Fail when the last line does not state a final number after the marker."""
        if final_number(answer.text, self.marker) is None:
            tail = answer.text.strip().splitlines()[-1][-60:] if answer.text.strip() else ""
            return GateResult(self.name, False, f"final_number: the answer does not end in '{self.marker} <number>' "
                                                f"(last line ends {tail!r})")
        return GateResult(self.name, True)


def _wrong_calculations(text: str) -> list[str]:
    wrong: list[str] = []
    pairs = [(m.group(0), m.group(1), m.group(2)) for m in _ANNOTATION.finditer(text)]
    prose = _ANNOTATION.sub(" ", text)
    pairs += [(m.group(0), m.group(1), m.group(2)) for m in _INLINE.finditer(prose)]
    for shown, expression, result in pairs:
        try:
            if not same_number(evaluate(expression), evaluate(result)):
                wrong.append(shown.strip())
        except NotArithmeticError:
            continue  # not a calculation we can check (a fraction left as text, a unit): no evidence either way
    return wrong


@dataclass(frozen=True, slots=True)
class ArithmeticGate:
    """Every checkable calculation written in the answer is right (to a cent)."""

    name: str = "arithmetic"

    def check(self, answer: Answer) -> GateResult:
        """Fail when a calculation is wrong, quoting the first one."""
        wrong = _wrong_calculations(answer.text)
        if wrong:
            return GateResult(self.name, False, f"arithmetic: {len(wrong)} calculation(s) are wrong, "
                                                f"first {wrong[0][:80]!r}")
        return GateResult(self.name, True)


@dataclass(frozen=True, slots=True)
class FinalAgreesGate:
    """The final number (after ``marker``) appears among the numbers of the reasoning before it."""

    marker: str = _DEFAULT_MARKER
    name: str = "final_agrees"

    def check(self, answer: Answer) -> GateResult:
        """Fail when the final number is not derived anywhere in the steps (no final line: pass; see final_number)."""
        final = final_number(answer.text, self.marker)
        if final is None:
            return GateResult(self.name, True)
        reasoning = answer.text[:answer.text.rfind(self.marker)]
        if any(same_number(n, final) for n in numbers_in(reasoning)):
            return GateResult(self.name, True)
        return GateResult(self.name, False, f"final_agrees: the final answer {final:g} appears nowhere in the "
                                            "reasoning before it")


_NUMERAL = re.compile(r"\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class QuestionNumbersGate:
    """Every numeral of the question (``Answer.prompt``) appears in the answer."""

    name: str = "question_numbers"

    def check(self, answer: Answer) -> GateResult:
        """Fail when a number given in the question is never used in the answer."""
        given = {n.replace(",", "") for n in _NUMERAL.findall(answer.prompt)}
        used = {n.replace(",", "") for n in _NUMERAL.findall(answer.text)}
        unused = sorted(given - used)
        if unused:
            return GateResult(self.name, False, f"question_numbers: the answer never uses {', '.join(unused[:5])} "
                                                "from the question")
        return GateResult(self.name, True)


@dataclass(frozen=True, slots=True)
class AnswerLengthGate:
    """The answer is at most ``max_chars`` characters (a soft signal: long reasoning, hard problem).

    Raises:
        RoutingConfigError: if ``max_chars`` < 1.
    """

    max_chars: int
    name: str = "answer_length"

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise RoutingConfigError(f"gate {self.name!r}: max_chars must be >= 1, got {self.max_chars}")

    def check(self, answer: Answer) -> GateResult:
        """Fail an answer longer than ``max_chars``."""
        if len(answer.text) > self.max_chars:
            return GateResult(self.name, False, f"answer_length: {len(answer.text)} characters is over the tier's "
                                                f"limit of {self.max_chars}")
        return GateResult(self.name, True)
