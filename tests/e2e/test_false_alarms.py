"""The default loop defenses tell legitimate repeated and templated work from a runaway (issue 13).

Each workload runs through the engine in virtual time with the DEFAULT policy (no policy file, no
budget), like the runaway stories of ``test_runaway_stories.py``: a benchmark that sends one request
many times, and a classifier that fills one template with different numbers, are not refused; the
same shapes at a runaway's cost still are. ``benchmarks/bench_false_alarms.py`` reports the rates.
"""

from __future__ import annotations

from collections.abc import Callable

from test_runaway_stories import USAGE, Outcome, simulate, story_request

from comptroller.domain.defenses.loops import LoopConfig
from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest

CLASSIFIER_MODEL = "gpt-4o"
CLASSIFIER_INPUT_TOKENS = 300
CLASSIFIER_USAGE = Usage(input_tokens=CLASSIFIER_INPUT_TOKENS, output_tokens=3)
SYSTEM = {"role": "system", "content": "You label customer support tickets."}


def ticket(i: int, *, failed: bool = False) -> str:
    """Ticket ``i`` of a classifier's template: only its numbers differ from the other tickets."""
    what = "delivery failed" if failed else "order arrived"
    return (f"Classify support ticket #{40_000 + 7 * i}: {what} with {1 + i % 9} items at {(i * 37) % 500 + 0.99} "
            f"EUR each, {i % 30} days ago, customer {90_000 + 13 * i}. Reply with one label: refund, exchange, "
            "question or complaint.")


def classifier_call(who: Attribution, text: str) -> CallRequest:
    """A small classification call: 300 input tokens, at most 3 output tokens, on gpt-4o."""
    messages = [SYSTEM, {"role": "user", "content": text}]
    return CallRequest(attribution=who, model=CLASSIFIER_MODEL, input_tokens_max=CLASSIFIER_INPUT_TOKENS,
                       max_tokens=CLASSIFIER_USAGE.output_tokens, fingerprint=fingerprint(CLASSIFIER_MODEL, messages),
                       text=text)


def repeated(*, large: bool = False) -> Callable[[int], CallRequest]:
    """A benchmark: the same request every time (a classifier call, or a story-sized 20,000-token call)."""
    who = Attribution(tenant="acme", agent="bench")
    text = ticket(1)
    if large:
        return lambda _: story_request(who, [SYSTEM, {"role": "user", "content": text}])
    return lambda _: classifier_call(who, text)


def templated(*, large: bool = False, failed: bool = False) -> Callable[[int], CallRequest]:
    """A classifier: one template, different numbers each call (story-sized calls when ``large``)."""
    who = Attribution(tenant="acme", agent="classifier")
    if large:
        return lambda i: story_request(who, [SYSTEM, {"role": "user", "content": ticket(i, failed=failed)}])
    return lambda i: classifier_call(who, ticket(i, failed=failed))


def run(workload: Callable[[int], CallRequest], calls: int, *, large: bool = False) -> Outcome:
    """``calls`` calls of ``workload``, one a second, each settled at its size's usage."""
    return simulate(workload, minutes=calls, step_s=1.0, usage=USAGE if large else CLASSIFIER_USAGE)


def test_a_classifier_filling_one_template_with_different_numbers_is_never_refused() -> None:
    """1,000 tickets differing only in their numbers, one a second: no refusal (they were locked after 5)."""
    outcome = run(templated(), 1_000)
    assert outcome.refused == {} and len(outcome.admitted_at) == 1_000


def test_a_benchmark_repeating_one_cheap_request_200_times_is_never_refused() -> None:
    """The same $0.0008 request 200 times stays under the $0.25 repeat floor: no refusal."""
    outcome = run(repeated(), 200)
    assert outcome.refused == {} and len(outcome.admitted_at) == 200


def test_the_same_benchmark_at_a_runaways_cost_is_stopped_after_identical_max_calls() -> None:
    """The same request at 20,000 tokens ($0.058 a call) is a retry loop: 5 calls pass, the rest are refused."""
    outcome = run(repeated(large=True), 200, large=True)
    assert len(outcome.admitted_at) == LoopConfig().identical_max
    assert set(outcome.refused) == {"loop_detected"}


def test_a_template_at_a_runaways_cost_is_stopped_once_it_reserved_the_template_floor() -> None:
    """Story-sized templated calls trip repeated_template once their ceilings reach $1: at most 1 + $1 / ceiling
    calls are paid."""
    outcome = run(templated(large=True), 200, large=True)
    per_call_mc = outcome.spent_mc // len(outcome.admitted_at)
    assert outcome.refused and len(outcome.admitted_at) <= 1 + LoopConfig().template_spend_mc_min // per_call_mc


def test_an_error_looking_template_is_compared_with_its_numbers_masked() -> None:
    """A cheap ticket template whose line says "failed" is one near-duplicate family: refused once it reserved
    the $0.25 repeat floor, not before."""
    outcome = run(templated(failed=True), 1_000)
    floor_calls = LoopConfig().repeat_spend_mc_min // (outcome.spent_mc // len(outcome.admitted_at))
    assert outcome.refused and floor_calls <= len(outcome.admitted_at) <= floor_calls + 2
