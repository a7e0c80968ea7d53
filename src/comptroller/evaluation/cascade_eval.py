"""Offline evaluation of a cheap-first cascade on RouteLLM's labelled GSM8K answers.

For every question the data holds both models' answers, so any escalation policy can be
scored without a model call: a question escalated to the strong model counts the strong
answer's label, otherwise the cheap one's. Costs are priced per call with the real price
book (genai-prices), tokens estimated from the text (:data:`TOKEN_METHOD`).

Strategies (a cascade always pays the cheap call, and the strong call when it escalates):

* always-cheap and always-strong;
* the oracle: escalate exactly the wrong cheap answers (an upper bound no gate reaches);
* the cascade with the hard gates (:data:`HARD_GATES`: final number, arithmetic,
  final agrees) and with every deterministic gate (:data:`ALL_GATES`: + question numbers);
* random escalation at each cascade's rate (seeded, averaged over ``seeds`` draws);
* the curve: every gate plus an answer-length limit (the rule of ``AnswerLengthGate``) swept over the answers' length
  percentiles, with the lowest-cost point at >= 95 % of the strong model's accuracy,
  both as tuned on the whole set (optimistic) and 2-fold cross-validated (the limit
  chosen on even-numbered questions scored on odd ones, and the reverse).

RouteLLM (Ong et al., 2024, "RouteLLM: Learning to Route LLMs with Preference Data")
reports a 35 % cost reduction at 95 % of GPT-4's quality on GSM8K with learned routers,
which send a question to one model; a cascade pays the cheap call too.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from comptroller.domain.pricing import ModelPrice, cost_mc
from comptroller.domain.routing.gates import Answer, Gate
from comptroller.domain.routing.numeric_gates import (
    ArithmeticGate,
    FinalAgreesGate,
    FinalNumberGate,
    QuestionNumbersGate,
)
from comptroller.domain.usage import Usage
from comptroller.evaluation.gsm8k import CHEAP_MODEL, STRONG_MODEL, Dataset
from comptroller.ports import PriceSource
from comptroller.reports.routing import RoutedRequest, RoutingReport, build_routing_report

__all__ = [
    "ALL_GATES",
    "HARD_GATES",
    "PRICED_AT",
    "PRICE_ALIASES",
    "TARGET_SHARE_OF_STRONG",
    "TOKEN_METHOD",
    "CascadeEvaluation",
    "CurvePoint",
    "GateStats",
    "Strategy",
    "estimate_tokens",
    "evaluate_cascade",
]

TOKEN_METHOD = ("tokens = ceil(UTF-8 bytes / 4), input = the 8-shot prompt RouteLLM sent, output = the answer text "
                "(OpenAI's rule of thumb of ~4 characters per English token; no tokenizer is downloaded; Mixtral's "
                "32k SentencePiece vocabulary yields somewhat more tokens than this for the cheap model)")
PRICED_AT = datetime(2024, 7, 1, tzinfo=UTC)
"""Prices as of RouteLLM's evaluation (mid-2024); genai-prices keeps dated prices."""
PRICE_ALIASES = {CHEAP_MODEL: "mixtral-8x7b"}
"""genai-prices has Mixtral-8x7B as Mistral's ``mixtral-8x7b`` (USD 0.70 / 0.70 per million tokens)."""
TARGET_SHARE_OF_STRONG = 0.95
HARD_GATES: tuple[Gate, ...] = (FinalNumberGate(), ArithmeticGate(), FinalAgreesGate())
ALL_GATES: tuple[Gate, ...] = (*HARD_GATES, QuestionNumbersGate())
_PERCENTILES = range(1, 100)


def estimate_tokens(text: str) -> int:
    """``ceil(UTF-8 bytes / 4)``, the stated estimate of :data:`TOKEN_METHOD`."""
    return math.ceil(len(text.encode("utf-8")) / 4)


@dataclass(frozen=True, slots=True)
class Strategy:
    """One escalation policy's totals over the questions.

    Attributes:
        name: the policy.
        correct: questions answered correctly (a mean for random policies).
        questions: how many questions.
        escalated: questions sent to the strong model.
        cost_mc: total cost, millicents (a rounded mean for random policies).
    """

    name: str
    correct: float
    questions: int
    escalated: int
    cost_mc: int

    @property
    def accuracy(self) -> float:
        """Correct / questions."""
        return self.correct / self.questions

    @property
    def escalation_rate(self) -> float:
        """Escalated / questions."""
        return self.escalated / self.questions


@dataclass(frozen=True, slots=True)
class GateStats:
    """A gate as a detector of wrong cheap answers: fails = flagged; precision = wrong among flagged."""

    gate: str
    fails: int
    caught: int
    wrong: int

    @property
    def precision(self) -> float:
        """Wrong cheap answers among those the gate failed (0 if it failed none)."""
        return self.caught / self.fails if self.fails else 0.0

    @property
    def recall(self) -> float:
        """Share of the wrong cheap answers the gate failed."""
        return self.caught / self.wrong if self.wrong else 0.0


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """Every gate plus ``answer_length <= max_chars`` (None: no length limit)."""

    max_chars: int | None
    strategy: Strategy


@dataclass(frozen=True, slots=True)
class CascadeEvaluation:
    """Everything ``eval-cascade`` reports (see the module docstring)."""

    questions: int
    prices: dict[str, dict[str, str]]
    strategies: tuple[Strategy, ...]
    gates: tuple[GateStats, ...]
    curve: tuple[CurvePoint, ...]
    target_accuracy: float
    best_in_sample: CurvePoint | None
    cross_validated: Strategy
    cross_validated_limits: tuple[int | None, int | None]
    routing: RoutingReport
    seeds: int
    token_method: str = TOKEN_METHOD

    def strategy(self, name: str) -> Strategy:
        """One strategy by name. Raises KeyError."""
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(name)

    def reduction(self, s: Strategy) -> float:
        """1 - cost / always-strong cost."""
        return 1 - s.cost_mc / self.strategy("always-strong").cost_mc

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        def strat(s: Strategy) -> dict[str, Any]:
            return {"name": s.name, "accuracy": s.accuracy, "correct": s.correct, "questions": s.questions,
                    "escalated": s.escalated, "escalation_rate": s.escalation_rate, "cost_mc": s.cost_mc,
                    "cost_reduction_vs_strong": self.reduction(s)}
        best = self.best_in_sample
        return {
            "questions": self.questions, "token_method": self.token_method, "prices": self.prices,
            "target_accuracy": self.target_accuracy, "seeds": self.seeds,
            "strategies": [strat(s) for s in self.strategies],
            "gates": [{"gate": g.gate, "fails": g.fails, "caught": g.caught, "precision": g.precision,
                       "recall": g.recall} for g in self.gates],
            "curve": [{"max_chars": p.max_chars, **strat(p.strategy)} for p in self.curve],
            "best_in_sample": None if best is None else {"max_chars": best.max_chars, **strat(best.strategy)},
            "cross_validated": {"limits": list(self.cross_validated_limits), **strat(self.cross_validated)},
            "routing": self.routing.to_dict(), "published_routellm_gsm8k_reduction": 0.35,
        }


@dataclass(frozen=True, slots=True)
class _Scored:
    """Per question: the labels, both calls' costs (mc), the gates' verdicts and the answer length."""

    cheap_ok: bool
    strong_ok: bool
    cheap_mc: int
    strong_mc: int
    fails: tuple[bool, ...]
    length: int


def _score(dataset: Dataset, cheap: ModelPrice, strong: ModelPrice) -> list[_Scored]:
    scored = []
    for item in dataset.items:
        prompt = dataset.prompt(item)
        input_tokens = estimate_tokens(prompt)
        answer = Answer(item.cheap_answer, None, prompt=item.question)
        scored.append(_Scored(
            item.cheap_correct, item.strong_correct,
            cost_mc(cheap, Usage(input_tokens, estimate_tokens(item.cheap_answer))),
            cost_mc(strong, Usage(input_tokens, estimate_tokens(item.strong_answer))),
            tuple(not g.check(answer).passed for g in ALL_GATES), len(item.cheap_answer)))
    return scored


def _cascade(name: str, rows: Sequence[_Scored], escalate: Callable[[_Scored], bool]) -> Strategy:
    flags = [escalate(r) for r in rows]
    correct = sum(r.strong_ok if f else r.cheap_ok for r, f in zip(rows, flags, strict=True))
    cost = sum(r.cheap_mc + (r.strong_mc if f else 0) for r, f in zip(rows, flags, strict=True))
    return Strategy(name, correct, len(rows), sum(flags), cost)


def _random(name: str, rows: Sequence[_Scored], escalated: int, seeds: int) -> Strategy:
    corrects, costs = [], []
    for seed in range(seeds):
        chosen = set(random.Random(seed).sample(range(len(rows)), escalated))
        corrects.append(sum(r.strong_ok if i in chosen else r.cheap_ok for i, r in enumerate(rows)))
        costs.append(sum(r.cheap_mc + (r.strong_mc if i in chosen else 0) for i, r in enumerate(rows)))
    return Strategy(name, statistics.fmean(corrects), len(rows), escalated, round(statistics.fmean(costs)))


def _gate_stats(rows: Sequence[_Scored]) -> tuple[GateStats, ...]:
    wrong = sum(not r.cheap_ok for r in rows)
    stats = [GateStats(g.name, sum(r.fails[i] for r in rows), sum(r.fails[i] and not r.cheap_ok for r in rows), wrong)
             for i, g in enumerate(ALL_GATES)]
    hard = len(HARD_GATES)
    for label, width in (("any hard gate", hard), ("any gate", len(ALL_GATES))):
        stats.append(GateStats(label, sum(any(r.fails[:width]) for r in rows),
                               sum(any(r.fails[:width]) and not r.cheap_ok for r in rows), wrong))
    return tuple(stats)


def _limits(rows: Sequence[_Scored]) -> list[int | None]:
    lengths = sorted(r.length for r in rows)
    grid = sorted({lengths[min(len(lengths) - 1, p * len(lengths) // 100)] for p in _PERCENTILES})
    return [None, *reversed(grid)]


def _curve(rows: Sequence[_Scored], limits: Sequence[int | None]) -> list[CurvePoint]:
    def rule(limit: int | None) -> Callable[[_Scored], bool]:
        return lambda r: any(r.fails) or (limit is not None and r.length > limit)
    return [CurvePoint(limit, _cascade(f"gates + length <= {limit}", rows, rule(limit))) for limit in limits]


def _cheapest_at_target(points: Sequence[CurvePoint], target: float) -> CurvePoint | None:
    meeting = [p for p in points if p.strategy.accuracy >= target]
    return min(meeting, key=lambda p: p.strategy.cost_mc) if meeting else None


def _cross_validate(rows: Sequence[_Scored], limits: Sequence[int | None]) -> tuple[Strategy, tuple[int | None, ...]]:
    halves = [rows[0::2], rows[1::2]]
    chosen: list[int | None] = []
    correct, escalated, cost = 0.0, 0, 0
    for train, test in ((halves[0], halves[1]), (halves[1], halves[0])):
        target = TARGET_SHARE_OF_STRONG * sum(r.strong_ok for r in train) / len(train)
        best = _cheapest_at_target(_curve(train, limits), target)
        limit = best.max_chars if best is not None else limits[-1]
        chosen.append(limit)
        (point,) = _curve(test, [limit])
        correct += point.strategy.correct
        escalated += point.strategy.escalated
        cost += point.strategy.cost_mc
    return Strategy("gates + length, 2-fold cross-validated", correct, len(rows), escalated, cost), tuple(chosen)


def _routing(rows: Sequence[_Scored]) -> RoutingReport:
    tiers = ("mixtral-8x7b", "gpt-4-1106")
    requests = [RoutedRequest("gsm8k (all gates)", tiers, tiers if any(r.fails) else tiers[:1],
                              tiers[1] if any(r.fails) else tiers[0],
                              r.cheap_mc + (r.strong_mc if any(r.fails) else 0)) for r in rows]
    (report,) = build_routing_report(requests)
    return report


def _price_rows(cheap: ModelPrice, strong: ModelPrice) -> dict[str, dict[str, str]]:
    return {label: {"model": p.model, "input_usd_per_mtok": str(p.input_mtok),
                    "output_usd_per_mtok": str(p.output_mtok), "source": p.source}
            for label, p in ((CHEAP_MODEL, cheap), (STRONG_MODEL, strong))}


def evaluate_cascade(dataset: Dataset, *, prices: PriceSource, seeds: int = 200) -> CascadeEvaluation:
    """Score every strategy of the module docstring on ``dataset``.

    Args:
        dataset: the labelled questions (:func:`comptroller.evaluation.gsm8k.load_gsm8k`).
        prices: a price book that knows both models (see :data:`PRICE_ALIASES`).
        seeds: random draws averaged for each random-escalation baseline (>= 1).

    Raises:
        ValueError: on an empty dataset or ``seeds`` < 1.
        UnknownModelError: if a model has no price.
    """
    if not dataset.items or seeds < 1:
        raise ValueError(f"need at least one question and one seed, got {len(dataset.items)} and {seeds}")
    cheap, strong = prices.price(CHEAP_MODEL, PRICED_AT), prices.price(STRONG_MODEL, PRICED_AT)
    rows = _score(dataset, cheap, strong)
    hard, every = len(HARD_GATES), len(ALL_GATES)
    hard_cascade = _cascade("cascade, hard gates", rows, lambda r: any(r.fails[:hard]))
    all_cascade = _cascade("cascade, all gates", rows, lambda r: any(r.fails[:every]))
    strategies = (
        _cascade("always-cheap", rows, lambda r: False),
        Strategy("always-strong", sum(r.strong_ok for r in rows), len(rows), len(rows),
                 sum(r.strong_mc for r in rows)),
        _cascade("oracle", rows, lambda r: not r.cheap_ok),
        hard_cascade, _random("random, hard-gate rate", rows, hard_cascade.escalated, seeds),
        all_cascade, _random("random, all-gate rate", rows, all_cascade.escalated, seeds),
    )
    strong_acc = sum(r.strong_ok for r in rows) / len(rows)
    limits = _limits(rows)
    curve = _curve(rows, limits)
    cv, cv_limits = _cross_validate(rows, limits)
    return CascadeEvaluation(
        questions=len(rows), prices=_price_rows(cheap, strong), strategies=strategies, gates=_gate_stats(rows),
        curve=tuple(curve), target_accuracy=TARGET_SHARE_OF_STRONG * strong_acc,
        best_in_sample=_cheapest_at_target(curve, TARGET_SHARE_OF_STRONG * strong_acc), cross_validated=cv,
        cross_validated_limits=(cv_limits[0], cv_limits[1]), routing=_routing(rows), seeds=seeds)
