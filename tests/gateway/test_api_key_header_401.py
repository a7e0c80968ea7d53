"""A call without a key is answered 401 naming the header that route's clients send the key in."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_kit import CLAUDE, MODEL, GatewayFactory, Harness, api_gateway
from stub_upstream import StubUpstream

MESSAGES: Any = [{"role": "user", "content": "Hi."}]


@pytest.fixture
def gw(make_gateway: GatewayFactory, stub: StubUpstream) -> Harness:
    """A gateway serving both API families."""
    return api_gateway(make_gateway, stub)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/messages/batches"])
def test_anthropic_routes_name_x_api_key(gw: Harness, path: str) -> None:
    """An Anthropic route without a key answers 401 in Anthropic's shape, naming x-api-key."""
    response = httpx.post(f"{gw.url}{path}", json={"model": CLAUDE, "max_tokens": 5, "messages": MESSAGES},
                          timeout=10)
    assert response.status_code == 401
    body = response.json()
    assert body["type"] == "error" and "'x-api-key: ck-...'" in body["error"]["message"]
    assert gw.stub.control.requests == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/batches"])
def test_openai_routes_name_the_bearer_header(gw: Harness, path: str) -> None:
    """An OpenAI route without a key answers 401 in OpenAI's shape, naming Authorization: Bearer, not x-api-key."""
    response = httpx.post(f"{gw.url}{path}", json={"model": MODEL, "messages": MESSAGES, "input": "Hi."}, timeout=10)
    assert response.status_code == 401
    message = response.json()["error"]["message"]
    assert "'Authorization: Bearer ck-...'" in message and "x-api-key" not in message

