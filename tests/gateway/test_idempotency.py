"""``Idempotency-Key`` on the chat route: one upstream call and one charge per key, replay, conflicts."""

from __future__ import annotations

import asyncio

import httpx
from gateway_kit import MODEL, GatewayFactory, Harness

from comptroller.gateway.idempotency import REPLAYED_HEADER

RETRIES = 16


def body(text: str, **extra: object) -> dict[str, object]:
    """A chat request body."""
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def post(gw: Harness, payload: dict[str, object], key: str | None = None, api_key: str | None = None) -> httpx.Response:
    """One POST /v1/chat/completions with an Idempotency-Key."""
    headers = {"authorization": f"Bearer {api_key or gw.key}"}
    if key is not None:
        headers["idempotency-key"] = key
    return httpx.post(f"{gw.url}/v1/chat/completions", json=payload, headers=headers, timeout=30)


async def retries(gw: Harness, payload: dict[str, object], key: str) -> list[httpx.Response]:
    """RETRIES concurrent requests with one key."""
    headers = {"authorization": f"Bearer {gw.key}", "idempotency-key": key}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=30) as client:
        return list(await asyncio.gather(*(client.post("/v1/chat/completions", json=payload)
                                           for _ in range(RETRIES))))


def test_concurrent_retries_are_one_upstream_call_and_one_charge(make_gateway: GatewayFactory) -> None:
    """16 concurrent retries: one runs, the others get 409 with Retry-After (or the replay); one usage row."""
    gw = make_gateway()
    gw.stub.control.latency_s = 1.0  # the first request is in flight while the others arrive
    answers = asyncio.run(retries(gw, body("once"), "retry-1"))
    served = [a for a in answers if a.status_code == 200 and REPLAYED_HEADER not in a.headers]
    busy = [a for a in answers if a.status_code == 409]
    assert len(served) == 1
    assert len(busy) + len(served) + sum(REPLAYED_HEADER in a.headers for a in answers) == RETRIES
    assert all(a.headers["retry-after"] == "1" and a.json()["error"]["code"] == "idempotency_key_in_use" for a in busy)
    assert len(gw.stub.control.requests) == 1
    records = list(gw.engine.store.usage_records())
    assert len(records) == 1
    assert gw.reserved_mc() == 0


def test_a_retry_after_the_call_settled_replays_the_stored_answer(make_gateway: GatewayFactory) -> None:
    """The replay has the first answer's status, body and cost header, and nothing new is charged or sent."""
    gw = make_gateway()
    first = post(gw, body("replay me"), "retry-2")
    again = post(gw, body("replay me"), "retry-2")
    assert first.status_code == again.status_code == 200
    assert again.headers[REPLAYED_HEADER] == "true" and REPLAYED_HEADER not in first.headers
    assert again.content == first.content
    assert again.headers["x-comptroller-cost-mc"] == first.headers["x-comptroller-cost-mc"]
    assert len(gw.stub.control.requests) == 1
    assert len(list(gw.engine.store.usage_records())) == 1


def test_the_same_key_with_another_body_is_422_and_another_tenant_has_its_own_keys(
        make_gateway: GatewayFactory) -> None:
    """A reused key with a different body is refused naming the key; the same key of another tenant runs."""
    gw = make_gateway()
    assert post(gw, body("first"), "retry-3").status_code == 200
    conflict = post(gw, body("second"), "retry-3")
    assert conflict.status_code == 422
    error = conflict.json()["error"]
    assert error["code"] == "idempotency_key_reused" and "retry-3" in error["message"]
    other_tenant = post(gw, body("first"), "retry-3", api_key=gw.new_key(tenant="globex"))
    assert other_tenant.status_code == 200 and REPLAYED_HEADER not in other_tenant.headers
    assert len(gw.stub.control.requests) == 2


def test_a_failed_call_is_not_stored_so_its_retry_runs(make_gateway: GatewayFactory) -> None:
    """An upstream failure (nothing charged) frees the key: the retry goes upstream and is served."""
    gw = make_gateway()
    gw.stub.control.fail_status = 500
    assert post(gw, body("flaky"), "retry-4").status_code == 502
    gw.stub.control.fail_status = None
    retried = post(gw, body("flaky"), "retry-4")
    assert retried.status_code == 200 and REPLAYED_HEADER not in retried.headers
    assert len(gw.stub.control.requests) == 2
    assert len(list(gw.engine.store.usage_records())) == 1


def test_a_finished_stream_is_replayed_as_the_same_stream(make_gateway: GatewayFactory) -> None:
    """The retry of a finished stream gets the same server-sent events, without a second upstream call."""
    gw = make_gateway()
    first = post(gw, body("stream", stream=True), "retry-5")
    again = post(gw, body("stream", stream=True), "retry-5")
    assert first.status_code == again.status_code == 200
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.text == first.text and "[DONE]" in again.text
    assert len(gw.stub.control.requests) == 1
    assert len(list(gw.engine.store.usage_records())) == 1


def test_a_malformed_key_is_400(gw: Harness) -> None:
    """A key with a space (or over 255 characters) is refused before anything is reserved."""
    for key in ("has space", "k" * 256):
        answer = post(gw, body("x"), key)
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "idempotency-key"
    assert gw.stub.control.requests == []


def test_idempotency_errors_come_in_the_routes_api_shape(gw: Harness) -> None:
    """Under /v1/messages a malformed key is refused in Anthropic's error shape, elsewhere in OpenAI's."""
    headers = {"authorization": f"Bearer {gw.key}", "idempotency-key": "has space"}
    anthropic = httpx.post(f"{gw.url}/v1/messages", headers=headers, timeout=30,
                           json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})
    assert anthropic.status_code == 400
    assert anthropic.json()["type"] == "error" and "Idempotency-Key" in anthropic.json()["error"]["message"]
    openai_shaped = post(gw, body("x"), "has space")
    assert openai_shaped.json()["error"]["param"] == "idempotency-key"
