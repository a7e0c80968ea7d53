"""Usage is checked before it is believed: overshoots are charged in full and recorded; the served model prices."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_kit import (
    CLAUDE,
    INPUT_MC_PER_TOKEN,
    MC_PER_TOKEN,
    MODEL,
    OUTPUT_MC_PER_TOKEN,
    PRICIER,
    GatewayFactory,
    Harness,
    api_gateway,
)
from stub_upstream import StubUpstream, prompt_tokens

MESSAGES: Any = [{"role": "user", "content": "Say five words."}]


@pytest.fixture
def gw(make_gateway: GatewayFactory, stub: StubUpstream) -> Harness:
    """A gateway serving both API families."""
    return api_gateway(make_gateway, stub)


def scrape(gw: Harness) -> str:
    """The /metrics text, read with an admin key."""
    key = gw.new_key("ops", admin=True)
    return httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {key}"}, timeout=10).text


def test_output_above_the_bound_is_charged_in_full_and_recorded(gw: Harness) -> None:
    """10M completion tokens reported for max_tokens = 50 are charged, flagged in a header, an event and a metric."""
    gw.stub.control.usage_override = {"completion_tokens": 10_000_000}
    raw = gw.client().chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=50)
    expected = prompt_tokens(MESSAGES) * INPUT_MC_PER_TOKEN + 10_000_000 * OUTPUT_MC_PER_TOKEN
    assert int(raw.headers["x-comptroller-cost-mc"]) == expected
    assert raw.headers["x-comptroller-usage-anomaly"] == "output_above_bound"
    events = gw.engine.store.events("usage_anomaly")
    assert [(e.code, e.detail["reported_tokens"], e.detail["bound_tokens"]) for e in events] == [
        ("output_above_bound", 10_000_000, 50)]
    assert 'comptroller_usage_anomalies_total{api="chat",code="output_above_bound"} 1.0' in scrape(gw)


def test_input_above_the_bound_is_recorded_on_a_stream(gw: Harness) -> None:
    """A streamed Messages answer reporting more input than the bound is charged and flagged in the stream."""
    gw.stub.control.usage_override = {"input_tokens": 1_000_000}
    with httpx.stream("POST", f"{gw.url}/v1/messages", headers={"x-api-key": gw.key}, timeout=20,
                      json={"model": CLAUDE, "max_tokens": 20, "messages": MESSAGES, "stream": True}) as response:
        text = "".join(response.iter_text())
    assert ": x-comptroller-usage-anomaly=input_above_bound" in text
    rates = MC_PER_TOKEN[CLAUDE]
    assert list(gw.engine.store.usage_records())[-1].cost_mc == 1_000_000 * rates[0] + 5 * rates[1]
    assert [e.code for e in gw.engine.store.events("usage_anomaly")] == ["input_above_bound"]


def test_a_different_served_model_settles_at_its_own_price(gw: Harness) -> None:
    """An answer from a pricier model than the one admitted is charged at the pricier model's rates."""
    gw.stub.control.served_model = PRICIER
    raw = gw.client().chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    rates = MC_PER_TOKEN[PRICIER]
    assert int(raw.headers["x-comptroller-cost-mc"]) == prompt_tokens(MESSAGES) * rates[0] + 5 * rates[1]
    assert raw.headers["x-comptroller-served-model"] == PRICIER
    [event] = gw.engine.store.events("served_model")
    assert (event.detail["admitted"], event.detail["served"]) == (MODEL, PRICIER)


def test_an_unpriced_served_model_is_charged_at_least_the_ceiling(gw: Harness) -> None:
    """A served model the price book does not know is charged the higher of its cost and the reserved ceiling."""
    gw.stub.control.served_model = "mystery-model"
    raw = gw.client().chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    at_admitted_price = prompt_tokens(MESSAGES) * INPUT_MC_PER_TOKEN + 5 * OUTPUT_MC_PER_TOKEN
    ceiling = int(raw.headers["x-comptroller-ceiling-mc"])
    assert int(raw.headers["x-comptroller-cost-mc"]) == max(at_admitted_price, ceiling)
    assert raw.headers["x-comptroller-served-model"] == "mystery-model"


def test_usage_within_its_bounds_raises_no_anomaly(gw: Harness) -> None:
    """An ordinary answer carries no anomaly header and records no anomaly event."""
    raw = gw.client().chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert "x-comptroller-usage-anomaly" not in raw.headers
    assert "x-comptroller-served-model" not in raw.headers
    assert gw.engine.store.events("usage_anomaly") == []
