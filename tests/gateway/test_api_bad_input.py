"""Bad input on every API: a 400 (or 404 for an unknown endpoint) in that API's shape naming the problem.

Nothing is reserved and nothing reaches the provider.
"""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from gateway_kit import CLAUDE, MODEL, GatewayFactory, Harness, api_gateway
from stub_upstream import StubUpstream

from comptroller.gateway.apis.request_body import DEPTH_MAX

MESSAGES = [{"role": "user", "content": "hi"}]
DEEP = "[" * (DEPTH_MAX + 1) + "]" * (DEPTH_MAX + 1)
VERY_DEEP = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit


def raw(body: dict[str, object], extra: str) -> bytes:
    """``body`` as JSON with ``"x": <extra>`` spliced in verbatim (non-standard literals, deep nesting)."""
    return json.dumps(body)[:-1].encode() + f', "x": {extra}}}'.encode()


CHAT = {"model": MODEL, "messages": MESSAGES}
RESPONSES = {"model": MODEL, "input": "hi"}
CLAUDE_BODY = {"model": CLAUDE, "max_tokens": 10, "messages": MESSAGES}
EMBED = {"model": MODEL, "input": "hi"}
LEGACY = {"model": MODEL, "prompt": "hi"}

CASES = [  # (path, body, param, code)
    ("/v1/chat/completions", {"messages": MESSAGES}, "model", "invalid_request"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, "messages", "invalid_request"),
    ("/v1/chat/completions", {**CHAT, "n": "2"}, "n", "invalid_request"),
    ("/v1/chat/completions", raw(CHAT, "Infinity"), None, "invalid_json"),
    ("/v1/chat/completions", raw(CHAT, DEEP), None, "invalid_json"),
    ("/v1/chat/completions", raw(CHAT, VERY_DEEP), None, "invalid_json"),
    ("/v1/responses", {"model": MODEL}, "input", "invalid_request"),
    ("/v1/responses", {"model": MODEL, "input": 42}, "input", "invalid_request"),
    ("/v1/responses", {**RESPONSES, "max_output_tokens": 0}, "max_output_tokens", "invalid_request"),
    ("/v1/responses", {**RESPONSES, "background": True}, "background", "invalid_request"),
    ("/v1/responses", {**RESPONSES, "tools": [{"type": "web_search"}]}, "tools[0]", "unsupported_content"),
    ("/v1/responses", raw(RESPONSES, "NaN"), None, "invalid_json"),
    ("/v1/responses", raw(RESPONSES, DEEP), None, "invalid_json"),
    ("/v1/messages", {"model": CLAUDE, "messages": MESSAGES}, "max_tokens", "invalid_request"),
    ("/v1/messages", {"model": CLAUDE, "max_tokens": 10, "messages": [{"role": "user", "content": 5}]},
     "messages[0].content", "invalid_request"),
    ("/v1/messages", {"max_tokens": 10, "messages": MESSAGES}, "model", "invalid_request"),
    ("/v1/messages", raw(CLAUDE_BODY, "-Infinity"), None, "invalid_json"),
    ("/v1/messages", raw(CLAUDE_BODY, DEEP), None, "invalid_json"),
    ("/v1/embeddings", {"model": MODEL}, "input", "invalid_request"),
    ("/v1/embeddings", {"model": MODEL, "input": ["a", 1]}, "input", "invalid_request"),
    ("/v1/embeddings", raw(EMBED, "Infinity"), None, "invalid_json"),
    ("/v1/embeddings", raw(EMBED, DEEP), None, "invalid_json"),
    ("/v1/completions", {"model": MODEL}, "prompt", "invalid_request"),
    ("/v1/completions", {**LEGACY, "max_tokens": "9"}, "max_tokens", "invalid_request"),
    ("/v1/completions", raw(LEGACY, DEEP), None, "invalid_json"),
]


def reservations(gw: Harness) -> int:
    """Reservations of any state in the ledger."""
    with sqlite3.connect(gw.engine.store.path) as conn:  # type: ignore[attr-defined]
        return int(conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0])


@pytest.fixture
def gw(make_gateway: GatewayFactory, stub: StubUpstream) -> Harness:
    """A gateway serving both API families."""
    return api_gateway(make_gateway, stub)


@pytest.mark.parametrize(("path", "body", "param", "code"), CASES)
def test_bad_body_is_400_in_the_apis_shape_naming_the_field(gw: Harness, path: str, body: dict[str, object] | bytes,
                                                           param: str | None, code: str) -> None:
    """A bad body answers 400 in its API's error shape, naming the field; nothing is reserved or sent."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{gw.url}{path}", content=content, timeout=20,
                          headers={"authorization": f"Bearer {gw.key}", "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["x-should-retry"] == "false"
    payload = response.json()
    error = payload["error"]
    if path == "/v1/messages":
        assert payload["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"] and (param is None or param.split("[")[0] in error["message"])
    assert reservations(gw) == 0 and gw.stub.control.requests == []


@pytest.mark.parametrize(("method", "path", "anthropic_shape"), [
    ("GET", "/v1/chat/completions", False), ("POST", "/v1/assistants", False), ("POST", "/v1/audio/speech", False),
    ("DELETE", "/v1/models", False), ("POST", "/v1/images/generations", False), ("GET", "/v1", False),
    ("POST", "/v1/messages/foo", True), ("GET", "/v1/messages", True),
])
def test_unknown_endpoint_is_404_naming_the_supported_ones(gw: Harness, method: str, path: str,
                                                           anthropic_shape: bool) -> None:
    """Any other path or method under /v1 answers 404 in the API's shape naming the endpoints; nothing passes."""
    response = httpx.request(method, f"{gw.url}{path}", headers={"authorization": f"Bearer {gw.key}"},
                             json={"model": MODEL}, timeout=20)
    assert response.status_code == 404
    payload = response.json()
    error = payload["error"]
    assert error["code"] == "unknown_endpoint"
    assert (payload.get("type") == "error") is anthropic_shape
    assert "POST /v1/responses" in error["message"] and "POST /v1/messages" in error["message"]
    assert reservations(gw) == 0 and gw.stub.control.requests == []


def test_media_parts_no_rule_bounds_are_refused_naming_the_part(gw: Harness) -> None:
    """An audio part in a Responses input is refused with 400 naming where it is."""
    body = {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}
    response = httpx.post(f"{gw.url}/v1/responses", json=body, headers={"authorization": f"Bearer {gw.key}"},
                          timeout=20)
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("input[0]")
    assert reservations(gw) == 0
