"""The pure batch rules: parsing and bounding lines, the batch discount, and results -> settle/release actions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from comptroller.batch_config import BatchSection
from comptroller.config import Policy
from comptroller.domain.batch_results import LineResult, Unreturned, anthropic_results, openai_results, reconcile
from comptroller.domain.batches import BatchInputError, discounted, parse_anthropic_requests, parse_openai_jsonl
from comptroller.domain.pricing import ModelPrice, TieredRate, cost_mc
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.domain.usage import Usage
from comptroller.prices import PriceBook
from comptroller.prices.batch import BatchPrices


def _row(custom_id: str, **body: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}})


def test_openai_lines_are_bounded_by_the_whole_request() -> None:
    """Each line's input bound is request_input_tokens_max of its body; max_tokens is read as the request."""
    raw = "\n".join([_row("a", max_tokens=7), "", _row("b", tools=[{"type": "function", "function": {"name": "x"}}])])
    lines = parse_openai_jsonl(raw.encode())
    assert [(line.custom_id, line.max_tokens) for line in lines] == [("a", 7), ("b", None)]
    assert [line.input_tokens_max for line in lines] == [request_input_tokens_max(line.body, api="chat")
                                                         for line in lines]


@pytest.mark.parametrize(("raw", "param"), [
    (_row("a") + "\n" + _row("a"), "line 2.custom_id"),
    (_row("a") + "\n" + _row("b", model="other"), "line 2.body.model"),
    (_row("a", stream=True), "line 1: body.stream"),
    (_row("a", max_tokens=0), "line 1: body.max_tokens"),
    ("{not json", "line 1"),
    ("", "file"),
])
def test_a_bad_openai_line_is_refused_naming_it(raw: str, param: str) -> None:
    """A repeated custom_id, a second model, a stream, a bad max_tokens, bad JSON or no line names where."""
    with pytest.raises(BatchInputError) as bad:
        parse_openai_jsonl(raw.encode())
    assert bad.value.param == param


def test_an_anthropic_request_needs_max_tokens_and_may_mix_models() -> None:
    """Message batch requests are bounded one by one; max_tokens is required."""
    body = {"requests": [{"custom_id": "a", "params": {"model": "x", "max_tokens": 5, "system": "s" * 100,
                                                       "messages": [{"role": "user", "content": "hi"}]}},
                         {"custom_id": "b", "params": {"model": "y", "max_tokens": 9, "messages": []}}]}
    lines = parse_anthropic_requests(body)
    assert [(line.model, line.max_tokens) for line in lines] == [("x", 5), ("y", 9)]
    assert lines[0].input_tokens_max >= 100  # the system prompt is counted
    with pytest.raises(BatchInputError):
        parse_anthropic_requests({"requests": [{"custom_id": "a", "params": {"model": "x", "messages": []}}]})


_RESULTS = [LineResult("a", True, Usage(10, 2)), LineResult("b", False), LineResult("c", True, Usage(4, 1)),
            LineResult("c", True, Usage(6, 3)), LineResult("zz", True, Usage(1, 1)), LineResult("e", True)]


@pytest.mark.parametrize(("unreturned", "settle_d"), [(Unreturned.SETTLE_BOUND, True), (Unreturned.RELEASE, False)])
def test_reconcile_matches_results_to_custom_ids(unreturned: Unreturned, settle_d: bool) -> None:
    """Succeeded lines settle (duplicates summed), failed release, unreturned follow the batch's end, and
    missing, duplicate and unexpected ids are reported."""
    plan = reconcile(["a", "b", "c", "d", "e"], _RESULTS, unreturned=unreturned)
    expected = {"a": Usage(10, 2), "c": Usage(10, 4), "e": None}
    if settle_d:
        expected["d"] = None
    assert plan.settle == expected
    assert plan.release == (["b"] if settle_d else ["b", "d"])
    assert (plan.missing, plan.duplicate, plan.unexpected) == (["d"], ["c"], ["zz"])


@given(st.lists(st.sampled_from("abcdef"), unique=True), st.lists(st.tuples(st.sampled_from("abcdefgh"),
                                                                             st.booleans())))
def test_every_submitted_line_is_settled_or_released_exactly_once(submitted: list[str],
                                                                  returned: list[tuple[str, bool]]) -> None:
    """Whatever comes back, each submitted custom_id gets exactly one action."""
    results = [LineResult(c, ok, Usage(1, 1) if ok else None) for c, ok in returned]
    for unreturned in Unreturned:
        plan = reconcile(submitted, results, unreturned=unreturned)
        assert sorted([*plan.settle, *plan.release]) == sorted(submitted)


_PRICE = ModelPrice(model="m", input_mtok=Decimal("3"), output_mtok=Decimal("15"), cache_read_mtok=Decimal("0.3"),
                    cache_write_mtok=TieredRate(Decimal("3.75"), ((200_000, Decimal("7.5")),)))


@given(st.integers(0, 100), st.integers(0, 10**7), st.integers(0, 10**6))
def test_a_discount_scales_every_rate_exactly(pct: int, input_tokens: int, output_tokens: int) -> None:
    """The discounted price of any usage is the standard Decimal cost times (100 - pct) %, rounded once."""
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=input_tokens // 3)
    cheap = discounted(_PRICE, pct)
    rates = _PRICE.bucket_rates(input_tokens)
    usd = (rates["uncached_input"] * usage.uncached_input_tokens + rates["cache_read"] * usage.cache_read_tokens
           + rates["output"] * output_tokens) / 1_000_000 * (100 - pct) / 100
    assert cost_mc(cheap, usage) == int((usd * 100_000).quantize(Decimal(1), rounding="ROUND_HALF_UP"))


def test_results_files_are_read_per_api() -> None:
    """OpenAI output/error lines and Anthropic result lines become succeeded (with usage) or not."""
    output = json.dumps({"custom_id": "a", "error": None, "response": {"status_code": 200, "body": {
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}}}}})
    embedding = json.dumps({"custom_id": "e", "error": None, "response": {"status_code": 200, "body": {
        "usage": {"prompt_tokens": 5, "total_tokens": 5}}}})
    errors = json.dumps({"custom_id": "b", "response": None, "error": {"code": "batch_expired"}})
    assert openai_results(f"{output}\n{embedding}\nnot json\n".encode(), errors.encode()) == [
        LineResult("a", True, Usage(9, 2, cache_read_tokens=4)), LineResult("e", True, Usage(5, 0)),
        LineResult("b", False)]
    rows = [{"custom_id": "x", "result": {"type": "succeeded", "message": {"usage": {
        "input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 4,
        "cache_creation": {"ephemeral_1h_input_tokens": 1}}}}},
            {"custom_id": "y", "result": {"type": "expired"}}]
    assert anthropic_results("\n".join(json.dumps(r) for r in rows).encode()) == [
        LineResult("x", True, Usage(12, 2, cache_read_tokens=5, cache_write_tokens=4, cache_write_1h_tokens=1)),
        LineResult("y", False)]


def test_the_batch_section_is_read_from_the_policy_and_checked() -> None:
    """``[batch]`` rides in the policy file; a discount outside 0..100 or a lease past the ledger max is refused."""
    policy = Policy.model_validate({"batch": {"discount_pct": 50, "discount_pct_by_model": {"m": 0}}})
    assert (policy.batch.discount_pct, policy.batch.discount_pct_by_model) == (50, {"m": 0})
    assert Policy.model_validate({}).batch.discount_pct == 0  # no discount unless known: an over-count
    for bad in ({"discount_pct": 101}, {"discount_pct_by_model": {"m": -1}}, {"lease_s": 86_401}, {"typo": 1}):
        with pytest.raises(ValidationError):
            Policy.model_validate({"batch": bad})


def test_batch_prices_prefer_the_model_override_then_genai_prices_then_the_discount() -> None:
    """A per-model percentage wins; else genai-prices' batch variant; else discount_pct off the standard price."""
    book = PriceBook(overrides={"local": _PRICE})
    at = datetime.now(UTC)
    standard = book.price("gpt-4o", at)
    genai_batch = book.batch_price("gpt-4o", at)
    assert genai_batch is not None and genai_batch.input_mtok < standard.input_mtok
    prices = BatchPrices(book, BatchSection(discount_pct=10, discount_pct_by_model={"gpt-4o": 20}))
    assert prices.price("gpt-4o", at).input_mtok == standard.input_mtok * Decimal("0.8")
    assert BatchPrices(book, BatchSection(discount_pct=10)).price("gpt-4o", at) == genai_batch
    assert prices.price("local", at).output_mtok == _PRICE.output_mtok * Decimal("0.9")
