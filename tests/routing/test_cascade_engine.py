"""Cascades through the engine: each tier attempt reserved and settled (or released) under one request id."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.defenses.loops import LoopConfig
from comptroller.domain.defenses.pinning import AgentPin, PinningPolicy
from comptroller.domain.pricing import ModelPrice, cost_mc
from comptroller.domain.routing import Cascade, CustomGate, GateResult, JsonSchemaGate, NonEmptyGate, Tier
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.usage import Usage
from comptroller.engine import Engine
from comptroller.prices import PriceBook
from comptroller.routing import CascadeRequest, Outcome, TierCall, TierReply, run_cascade, run_cascade_async
from comptroller.storage.memory import MemoryStore

START = datetime(2025, 6, 1, 9, tzinfo=UTC)
PRICES = {
    "local-8b": ModelPrice(model="local-8b", input_mtok=Decimal("0.10"), output_mtok=Decimal("0.20"), source="test"),
    "frontier": ModelPrice(model="frontier", input_mtok=Decimal("5"), output_mtok=Decimal("15"), source="test"),
}
SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}
WHO = Attribution(tenant="acme", agent="writer", conversation="c-1")


def _engine(store: MemoryStore) -> Engine:
    return Engine(store=store, prices=PriceBook(overrides=PRICES), clock=VirtualClock(START),
                  caps=OutputCaps(default_tokens=500))


def _cascade(attempts_max: int = 1) -> Cascade:
    gates = (NonEmptyGate(), JsonSchemaGate(SCHEMA))
    return Cascade("support", (Tier("local", ("local-8b",), attempts_max, gates), Tier("frontier", ("frontier",))))


class Upstream:
    """A scripted provider: answers per model, and records every call it got."""

    def __init__(self, answers: dict[str, list[str]], usage: Usage) -> None:
        self.answers = {m: list(texts) for m, texts in answers.items()}
        self.usage = usage
        self.calls: list[TierCall] = []

    def __call__(self, call: TierCall) -> TierReply:
        self.calls.append(call)
        text = self.answers[call.model].pop(0)
        if text == "RAISE":
            raise ConnectionError("upstream reset")
        return TierReply(text, self.usage)


def test_invalid_json_at_tier_one_escalates_and_both_attempts_are_settled() -> None:
    """Tier 1 answers invalid JSON, tier 2 valid: the result names tier 2, and the ledger settled both."""
    store = MemoryStore()
    usage = Usage(input_tokens=300, output_tokens=40)
    upstream = Upstream({"local-8b": ["{not json"], "frontier": ['{"answer": "42"}']}, usage)
    request = CascadeRequest(WHO, input_tokens_max=400, max_tokens=100, request_id="req-1")
    result = run_cascade(_engine(store), _cascade(), request, upstream)

    assert (result.outcome, result.tier, result.model) == (Outcome.ANSWERED, "frontier", "frontier")
    assert result.reply is not None and result.reply.text == '{"answer": "42"}'
    (passed,) = result.passed_over
    assert (passed.tier, passed.model) == ("local", "local-8b") and "not valid JSON" in passed.reason
    assert result.headers()["x-comptroller-tier"] == "frontier"

    records = list(store.usage_records())
    assert [r.idempotency_key for r in records] == ["req-1:local:1", "req-1:frontier:1"]
    assert all(r.outcome == "settled" and r.attribution == WHO for r in records)
    expected = [cost_mc(PRICES["local-8b"], usage), cost_mc(PRICES["frontier"], usage)]
    assert [r.cost_mc for r in records] == expected
    assert result.cost_mc == sum(expected)
    assert all(a.reserved_mc == 0 for a in store.accounts())
    (event,) = store.events("route")
    assert event.detail["request_id"] == "req-1" and event.detail["tier"] == "frontier"
    assert event.detail["cost_mc"] == sum(expected)


def test_two_attempts_at_a_tier_before_escalating() -> None:
    """attempts_max = 2: the local tier is tried twice, then the cascade escalates."""
    store = MemoryStore()
    upstream = Upstream({"local-8b": ["", "still no"], "frontier": ['{"answer": "a"}']}, Usage(10, 5))
    result = run_cascade(_engine(store), _cascade(attempts_max=2), CascadeRequest(WHO, 50, request_id="r"), upstream)
    assert [(c.tier, c.attempt) for c in upstream.calls] == [("local", 1), ("local", 2), ("frontier", 1)]
    assert [p.attempt for p in result.passed_over] == [1, 2]
    assert "empty" in result.passed_over[0].reason and "not valid JSON" in result.passed_over[1].reason
    assert len(list(store.usage_records())) == 3


def test_the_first_tier_answers_when_its_gates_pass() -> None:
    """A valid cheap answer is returned without calling the frontier tier."""
    store = MemoryStore()
    upstream = Upstream({"local-8b": ['{"answer": "cheap"}'], "frontier": []}, Usage(10, 5))
    result = run_cascade(_engine(store), _cascade(), CascadeRequest(WHO, 50), upstream)
    assert (result.tier, result.passed_over, len(upstream.calls)) == ("local", (), 1)
    assert "passed gates non_empty, json_schema" in result.reason


def test_an_upstream_error_releases_the_hold_and_escalates() -> None:
    """A raising call releases its reservation (nothing charged) and the next tier answers."""
    store = MemoryStore()
    upstream = Upstream({"local-8b": ["RAISE"], "frontier": ['{"answer": "a"}']}, Usage(10, 5))
    result = run_cascade(_engine(store), _cascade(), CascadeRequest(WHO, 50, request_id="r"), upstream)
    assert result.tier == "frontier"
    assert result.attempts[0].code == str(Code.RELEASED) and result.attempts[0].cost_mc == 0
    assert "upstream error: ConnectionError" in result.passed_over[0].reason
    assert [r.idempotency_key for r in store.usage_records()] == ["r:frontier:1"]


def test_every_tier_failing_returns_the_last_answer_unaccepted() -> None:
    """With gates on the last tier too and every answer failing, the outcome is exhausted."""
    gates = (JsonSchemaGate(SCHEMA),)
    cascade = Cascade("strict", (Tier("local", ("local-8b",), 1, gates), Tier("frontier", ("frontier",), 1, gates)))
    upstream = Upstream({"local-8b": ["no"], "frontier": ["nope"]}, Usage(10, 5))
    result = run_cascade(_engine(MemoryStore()), cascade, CascadeRequest(WHO, 50), upstream)
    assert (result.outcome, result.tier) == (Outcome.EXHAUSTED, "frontier")
    assert result.reply is not None and result.reply.text == "nope"
    assert len(result.passed_over) == 2


def test_a_budget_refusal_at_the_frontier_stops_the_cascade_after_settling_tier_one() -> None:
    """The agent's budget admits the cheap attempt but not the frontier one: refused, with the verdict."""
    store = MemoryStore()
    engine = _engine(store)
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 200))
    upstream = Upstream({"local-8b": ["bad"], "frontier": ['{"answer": "a"}']}, Usage(100, 50))
    result = run_cascade(engine, _cascade(), CascadeRequest(WHO, 1_000, max_tokens=200), upstream)
    assert result.outcome is Outcome.REFUSED and result.verdict is not None
    assert result.verdict.code is Code.BUDGET_EXCEEDED
    assert [c.tier for c in upstream.calls] == ["local"]
    assert len(list(store.usage_records())) == 1


def test_pinning_beats_routing_the_pinned_agent_never_reaches_the_frontier() -> None:
    """An agent pinned to the local model skips the frontier tier, with pinning as the reason."""
    pins = PinningPolicy(pins={"writer": AgentPin(models=("local-8b",))})
    upstream = Upstream({"local-8b": ["bad"], "frontier": ['{"answer": "a"}']}, Usage(10, 5))
    result = run_cascade(_engine(MemoryStore()), _cascade(), CascadeRequest(WHO, 50), upstream, pinning=pins)
    assert [c.model for c in upstream.calls] == ["local-8b"]
    assert result.outcome is Outcome.EXHAUSTED
    assert any(p.tier == "frontier" and p.reason.startswith("pinning:") for p in result.passed_over)


def test_pinning_beats_a_route_that_starts_at_a_forbidden_tier() -> None:
    """A route starting at the frontier tier for an agent pinned to local is refused model_not_allowed, no call."""
    pins = PinningPolicy(pins={"writer": AgentPin(models=("local-8b",))})
    upstream = Upstream({}, Usage(10, 5))
    result = run_cascade(_engine(MemoryStore()), _cascade(), CascadeRequest(WHO, 50), upstream,
                         start_tier=1, pinning=pins)
    assert result.outcome is Outcome.REFUSED and upstream.calls == []
    assert result.verdict is not None and result.verdict.code is Code.MODEL_NOT_ALLOWED


def test_the_async_driver_gives_the_same_result() -> None:
    """run_cascade_async escalates the same way with an awaitable call."""
    store = MemoryStore()
    upstream = Upstream({"local-8b": ["{bad"], "frontier": ['{"answer": "a"}']}, Usage(10, 5))

    async def call(tier_call: TierCall) -> TierReply:
        return upstream(tier_call)
    result = asyncio.run(run_cascade_async(_engine(store), _cascade(), CascadeRequest(WHO, 50, request_id="a"), call))
    assert result.tier == "frontier"
    assert [r.idempotency_key for r in store.usage_records()] == ["a:local:1", "a:frontier:1"]


@pytest.mark.parametrize("start", [-1, 2])
def test_a_start_tier_outside_the_cascade_is_an_error(start: int) -> None:
    """start_tier must be a tier position."""
    with pytest.raises(ValueError, match="outside cascade"):
        run_cascade(_engine(MemoryStore()), _cascade(), CascadeRequest(WHO, 50), Upstream({}, Usage(1, 1)),
                    start_tier=start)


def test_headers_are_single_line_ascii() -> None:
    """Reasons with newlines or non-ASCII text become one ASCII line per header."""
    def gate(answer: object) -> GateResult:
        return GateResult("g", False, "line one\nline two — ü")
    cascade = Cascade("c", (Tier("local", ("local-8b",), 1, (CustomGate("g", gate),)), Tier("frontier", ("frontier",))))
    upstream = Upstream({"local-8b": ["x"], "frontier": ["y"]}, Usage(1, 1))
    headers = run_cascade(_engine(MemoryStore()), cascade, CascadeRequest(WHO, 10), upstream).headers()
    assert headers["x-comptroller-passed-over"] == "local#1: line one line two ? ?"
    assert all(v.isascii() and "\n" not in v for v in headers.values())


def test_the_defenses_apply_to_every_attempt_but_escalation_is_not_a_repeat() -> None:
    """A cascade's own escalation passes the loop detectors; the same request sent again and again is
    refused as a repeat (same_request), and an attempt in a run past its deadline is refused."""
    store = MemoryStore()
    clock = VirtualClock(START)
    loops = LoopConfig(identical_max=2, repeat_spend_mc_min=0)  # trip on count alone (no spend floor)
    engine = Engine(store=store, prices=PriceBook(overrides=PRICES), clock=clock, caps=OutputCaps(default_tokens=500),
                    defenses=Defenses(breakers=None, retries=None, loops=loops))
    usage = Usage(input_tokens=300, output_tokens=40)

    def ask(request_id: str, **extra: str) -> Outcome:
        upstream = Upstream({"local-8b": ["{not json"], "frontier": ['{"answer": "42"}']}, usage)
        request = CascadeRequest(WHO, input_tokens_max=400, request_id=request_id,
                                 **{"fingerprint": "fp", "text": "same ask", **extra})
        result = run_cascade(engine, _cascade(), request, upstream)
        return result.verdict.detector if result.verdict is not None else result.outcome  # type: ignore[return-value]

    assert [ask("q1"), ask("q2")] == [Outcome.ANSWERED, Outcome.ANSWERED]  # 2 tiers each: no repeat yet
    assert ask("q3") == "same_request"  # the third identical request (identical_max = 2)
    engine.open_run("cron-7", 10, attribution=WHO)
    clock.advance(11)
    assert ask("q4", run_id="cron-7", fingerprint="other") == "run_deadline"
