"""Refusals on every paid endpoint, in each API's shape, with retry headers the official clients honour."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest
from gateway_kit import CLAUDE, MODEL, GatewayFactory, Harness, api_gateway, api_policy
from stub_upstream import StubUpstream

from comptroller.domain.codes import Code
from comptroller.domain.defenses.loops import LoopConfig
from comptroller.domain.defenses.verdict import Rule, Verdict
from comptroller.domain.scopes import Level
from comptroller.gateway.errors import ErrorShape, verdict_response

MESSAGES: Any = [{"role": "user", "content": "Say five words."}]


def paid_calls(gw: Harness) -> dict[str, Callable[[], object]]:
    """One call per paid endpoint and mode, through the official clients with their default retries (2)."""
    oa = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, timeout=20)
    an = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, timeout=20)

    def claude_stream() -> object:
        with an.messages.stream(model=CLAUDE, max_tokens=20, messages=MESSAGES) as stream:
            return stream.get_final_message()

    return {
        "chat": lambda: oa.chat.completions.create(model=MODEL, messages=MESSAGES),
        "chat stream": lambda: list(oa.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)),
        "responses": lambda: oa.responses.create(model=MODEL, input="Say five words."),
        "responses stream": lambda: list(oa.responses.create(model=MODEL, input="Say five words.", stream=True)),
        "embeddings": lambda: oa.embeddings.create(model=MODEL, input="embed me"),
        "completions": lambda: oa.completions.create(model=MODEL, prompt="Say five words."),
        "messages": lambda: an.messages.create(model=CLAUDE, max_tokens=20, messages=MESSAGES),
        "messages stream": claude_stream,
    }


def test_zero_budget_refuses_every_paid_endpoint_once_and_sends_nothing(make_gateway: GatewayFactory,
                                                                          stub: StubUpstream) -> None:
    """With a $0 tenant budget every paid endpoint is refused in its shape, not retried, and the stub sees nothing."""
    policy = api_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 0}])
    gw = api_gateway(make_gateway, stub, policy)
    calls = paid_calls(gw)
    for name, call in calls.items():
        with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)) as caught:
            call()
        response = caught.value.response
        assert response.headers["x-should-retry"] == "false", name
        body = response.json()
        if name.startswith("messages"):
            assert body["type"] == "error" and body["error"]["type"] == "billing_error", name
            assert body["error"]["code"] == "budget_exceeded"
        else:
            assert (body["error"]["type"], body["error"]["code"]) == ("insufficient_quota", "budget_exceeded"), name
    assert stub.control.requests == []
    assert len(gw.engine.store.events("refusal")) == len(calls)  # one request each: the clients did not retry
    assert gw.pending() == 0


def test_loop_refusal_is_not_a_quota_error(gw: Harness) -> None:
    """A loop refusal says loop_detected in its type and tells clients not to retry within their horizon."""
    client = gw.client(**{"X-Comptroller-Agent": "looper"})
    for _ in range(LoopConfig().identical_max):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    error = caught.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("loop_detected", "loop_detected")
    headers = caught.value.response.headers
    assert headers.get("x-should-retry") == "false" or int(headers["Retry-After"]) <= 60


@pytest.mark.parametrize(("wait_s", "retry_after", "should_retry"), [(4.2, "5", None), (3600.0, "3600", "false"),
                                                                     (None, None, "false")])
def test_retry_headers_follow_the_wait(wait_s: float | None, retry_after: str | None,
                                       should_retry: str | None) -> None:
    """A short wait carries Retry-After alone; a long one or none also says x-should-retry: false."""
    verdict = Verdict(code=Code.PACE_EXCEEDED, rule=Rule.PACING, detector="pace", level=Level.TENANT,
                      scope="test|acme", message="spending too fast", retry_after_s=wait_s)
    for shape in ErrorShape:
        response = verdict_response(verdict, shape)
        assert response.status_code == 429
        assert response.headers.get("retry-after") == retry_after
        assert response.headers.get("x-should-retry") == should_retry


def test_each_api_goes_only_to_its_family(make_gateway: GatewayFactory, stub: StubUpstream) -> None:
    """Messages to an OpenAI-family model, or chat to an Anthropic one, is a 400 naming model and family."""
    gw = api_gateway(make_gateway, stub)
    with pytest.raises(anthropic.BadRequestError) as wrong_anthropic:
        gw.anthropic().messages.create(model=MODEL, max_tokens=20, messages=MESSAGES)
    error = wrong_anthropic.value.response.json()["error"]
    assert error["code"] == "wrong_api_family" and MODEL in error["message"] and "'openai'" in error["message"]
    with pytest.raises(openai.BadRequestError) as wrong_openai:
        gw.client().chat.completions.create(model=CLAUDE, messages=MESSAGES)
    assert wrong_openai.value.code == "wrong_api_family" and "'anthropic'" in wrong_openai.value.message
    assert stub.control.requests == [] and gw.pending() == 0


def test_count_tokens_passes_through_free(make_gateway: GatewayFactory, stub: StubUpstream) -> None:
    """count_tokens reaches the Anthropic provider and reserves nothing, even with a $0 budget."""
    gw = api_gateway(make_gateway, stub, api_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 0}]))
    counted = gw.anthropic().messages.count_tokens(model=CLAUDE, messages=MESSAGES)
    assert counted.input_tokens > 0
    assert stub.control.paths == ["/v1/messages/count_tokens"]
    assert list(gw.engine.store.usage_records()) == [] and gw.pending() == 0


def test_metrics_need_the_admin_key_or_the_scrape_token(make_gateway: GatewayFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """/metrics answers 401 without a key, with a tenant key or a wrong token; the admin key and the token get in."""
    monkeypatch.setenv("TEST_SCRAPE_TOKEN", "scrape-me-please")
    gw = make_gateway(metrics_token_env="TEST_SCRAPE_TOKEN")
    url = f"{gw.url}/metrics"

    def status(token: str | None) -> int:
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        return httpx.get(url, headers=headers, timeout=10).status_code

    assert [status(None), status(gw.key), status("scrape-me-not")] == [401, 401, 401]
    assert status("scrape-me-please") == 200
    assert status(gw.new_key("ops", admin=True)) == 200
