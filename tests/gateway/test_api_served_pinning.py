"""Pinning after the answer: a response served by a model outside the agent's pin refuses its next calls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest
from gateway_kit import CLAUDE, MC_PER_TOKEN, MODEL, PRICIER, GatewayFactory, Harness, api_gateway, api_policy
from stub_upstream import StubUpstream, prompt_tokens
from typer.testing import CliRunner

from comptroller.bootstrap import build_engine
from comptroller.cli.main import app
from comptroller.clock import SystemClock
from comptroller.domain.defenses.served_drift import ServedDrift, reset_served_drift
from comptroller.domain.scopes import Attribution
from comptroller.engine import CallRequest
from comptroller.engine.admin import Admin

MESSAGES: Any = [{"role": "user", "content": "Say five words."}]
PINS = {"agents": {"writer": {"models": [MODEL, CLAUDE]}, "roomy": {"models": [MODEL, PRICIER]}}}
WRITER_SCOPE = "test|acme|writer"


@pytest.fixture
def gw(make_gateway: GatewayFactory, stub: StubUpstream) -> Harness:
    """A gateway serving both API families, with the writer pinned to the stub model and Claude."""
    return api_gateway(make_gateway, stub, api_policy(pinning=PINS))


def drift_once(gw: Harness, key: str) -> httpx.Response:
    """One chat call the stub answers with the pricier model; the stub answers as asked afterwards."""
    gw.stub.control.served_model = PRICIER
    try:
        return httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=20,
                          json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5})
    finally:
        gw.stub.control.served_model = None


def test_a_served_model_outside_the_pin_refuses_the_next_call(gw: Harness) -> None:
    """The drifted call is charged as served; the agent's next call is refused naming the served model, unsent."""
    key = gw.new_key("acme", agent="writer")
    first = drift_once(gw, key)
    assert first.status_code == 200
    rates = MC_PER_TOKEN[PRICIER]
    assert int(first.headers["x-comptroller-cost-mc"]) == prompt_tokens(MESSAGES) * rates[0] + 5 * rates[1]
    sent = len(gw.stub.control.requests)
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert caught.value.code == "model_not_allowed"
    assert PRICIER in caught.value.message and WRITER_SCOPE in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(gw.stub.control.requests) == sent
    [event] = gw.engine.store.events("pinning")
    assert (event.code, event.scope, event.detail["served_model"]) == ("served_model_not_allowed", WRITER_SCOPE,
                                                                       PRICIER)


def test_the_refusal_holds_on_every_api_in_its_shape(gw: Harness) -> None:
    """After a drift, the writer's Messages call is refused too, as an Anthropic error naming the served model."""
    key = gw.new_key("acme", agent="writer")
    drift_once(gw, key)
    sent = len(gw.stub.control.requests)
    with pytest.raises(anthropic.RateLimitError) as caught:
        gw.anthropic(key).messages.create(model=CLAUDE, max_tokens=5, messages=MESSAGES)
    assert PRICIER in str(caught.value)
    assert len(gw.stub.control.requests) == sent


def test_an_admin_reset_lets_the_agent_call_again(gw: Harness) -> None:
    """Admin.reset_served_drift clears the refusal; the agent's next call is served."""
    key = gw.new_key("acme", agent="writer")
    drift_once(gw, key)
    admin = Admin(gw.engine.store, gw.engine.clock)
    assert [d.served_model for d in admin.served_drifts()] == [PRICIER]
    assert not admin.reset_served_drift(WRITER_SCOPE, by="ops").drifted
    reply = gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert reply.model == MODEL
    assert [e.code for e in gw.engine.store.events("pinning")] == ["served_model_not_allowed", "drift_reset"]


def test_a_served_model_the_pin_allows_refuses_nothing(gw: Harness) -> None:
    """An agent whose pin allows the served model keeps calling (charged as served, no drift recorded)."""
    key = gw.new_key("acme", agent="roomy")
    assert drift_once(gw, key).headers["x-comptroller-served-model"] == PRICIER
    gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert gw.engine.store.events("pinning") == []


def test_an_unpinned_agent_is_not_refused(gw: Harness) -> None:
    """Without a pin (and no default pin) any served model is charged as served and the agent keeps calling."""
    key = gw.new_key("acme", agent="free")
    drift_once(gw, key)
    gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert gw.engine.store.events("pinning") == []


def test_another_agent_of_the_tenant_is_not_refused(gw: Harness) -> None:
    """The drift refuses the agent that drifted, not its tenant's other pinned agents."""
    drift_once(gw, gw.new_key("acme", agent="writer"))
    gw.client(gw.new_key("acme", agent="roomy")).chat.completions.create(model=MODEL, messages=MESSAGES,
                                                                         max_tokens=5)


def test_another_worker_on_the_same_ledger_refuses_too(gw: Harness) -> None:
    """A second engine on the same ledger file refuses the drifted agent (the drift is a ledger state row)."""
    drift_once(gw, gw.new_key("acme", agent="writer"))
    path = gw.engine.store.path  # type: ignore[attr-defined]
    other = build_engine(db_url=f"sqlite:///{path}", policy=api_policy(pinning=PINS), clock=SystemClock())
    attribution = Attribution(namespace="test", tenant="acme", agent="writer")
    admission = other.admit(CallRequest(attribution=attribution, model=MODEL, input_tokens_max=10, max_tokens=5))
    assert admission.verdict is not None and admission.verdict.detector == "served_not_pinned"
    assert admission.verdict.evidence["served_model"] == PRICIER


def stream_text(gw: Harness, key: str, path: str, body: dict[str, Any]) -> str:
    """A streamed call's whole SSE text."""
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{gw.url}{path}", headers=headers, json={**body, "stream": True},
                      timeout=20) as response:
        assert response.status_code == 200
        return "".join(response.iter_text())


def test_a_streamed_chat_settles_at_the_served_models_price(gw: Harness) -> None:
    """A chat stream answered by the pricier model is charged at its rates, says so in an SSE comment, and drifts."""
    key = gw.new_key("acme", agent="writer")
    gw.stub.control.served_model = PRICIER
    text = stream_text(gw, key, "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 5})
    gw.stub.control.served_model = None
    rates = MC_PER_TOKEN[PRICIER]
    expected = prompt_tokens(MESSAGES) * rates[0] + 5 * rates[1]
    assert f": x-comptroller-cost-mc={expected}\n" in text
    assert f": x-comptroller-served-model={PRICIER}\n" in text
    assert text.index("x-comptroller-served-model") < text.index("data: [DONE]")
    [record] = gw.engine.store.usage_records()
    assert record.cost_mc == expected
    [event] = gw.engine.store.events("served_model")
    assert (event.detail["admitted"], event.detail["served"]) == (MODEL, PRICIER)
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert PRICIER in caught.value.message


def test_a_stream_served_as_admitted_has_no_served_model_comment(gw: Harness) -> None:
    """A chat stream answered by the model asked for carries no served-model comment and records no event."""
    text = stream_text(gw, gw.key, "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 5})
    assert "x-comptroller-served-model" not in text
    assert gw.engine.store.events("served_model") == []


def test_comptroller_pin_list_and_reset_from_the_cli(gw: Harness) -> None:
    """`comptroller pin list` shows the drifted agent; `pin reset --scope` (the scope the refusal names) clears it."""
    key = gw.new_key("acme", agent="writer")
    drift_once(gw, key)
    db = f"sqlite:///{gw.engine.store.path}"  # type: ignore[attr-defined]
    runner = CliRunner()
    listed = runner.invoke(app, ["pin", "list", "--db", db], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert PRICIER in listed.output
    reset = runner.invoke(app, ["pin", "reset", "--scope", WRITER_SCOPE, "--by", "ops", "--db", db])
    assert reset.exit_code == 0, reset.output
    gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    unknown = runner.invoke(app, ["pin", "reset", "--scope", "test|acme|nobody", "--db", db], env={"COLUMNS": "250"})
    assert unknown.exit_code != 0 and "no served-model drift" in unknown.output


def test_a_drift_state_survives_its_record_and_a_reset_clears_it() -> None:
    """ServedDrift round-trips through its record; a reset clears it and a second reset changes nothing."""
    drift = ServedDrift(WRITER_SCOPE, "writer", PRICIER, MODEL, "r1", datetime(2026, 1, 2, tzinfo=UTC), 3)
    assert ServedDrift.from_record(drift.to_record()) == drift
    cleared = reset_served_drift(drift, datetime(2026, 1, 3, tzinfo=UTC), by="ops")
    assert not cleared.state.drifted and cleared.state.version == 4 and len(cleared.events) == 1
    assert reset_served_drift(cleared.state, datetime(2026, 1, 4, tzinfo=UTC), by="ops").state is cleared.state
