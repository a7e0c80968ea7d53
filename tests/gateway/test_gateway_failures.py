"""Every exit of a call settles or releases: upstream errors, timeouts, disconnects, ledger failure, bad input."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import openai
import pytest
from gateway_kit import MODEL, OUTPUT_CAP, GatewayFactory, Harness, wait_for

from comptroller.gateway.config import ProviderConfig

MESSAGES = [{"role": "user", "content": "Count slowly."}]


def test_upstream_500_releases_and_answers_502(gw: Harness) -> None:
    """An upstream 500 becomes 502 with the provider's message; the hold is released, nothing charged."""
    gw.stub.control.fail_status = 500
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "stub failure 500" in caught.value.message
    assert gw.pending() == 0
    assert gw.reserved_mc() == 0
    assert list(gw.engine.store.usage_records()) == []


def test_upstream_4xx_passes_through_and_releases(gw: Harness) -> None:
    """A provider's 400 reaches the client as it came, and the call is not charged."""
    gw.stub.control.fail_status = 400
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert caught.value.code == "stub_failure"
    assert gw.pending() == 0
    assert list(gw.engine.store.usage_records()) == []


def test_upstream_timeout_releases_and_answers_504(make_gateway: GatewayFactory) -> None:
    """A provider slower than the read timeout gives 504, and the reservation is released."""
    gw = make_gateway(read_timeout_s=0.2)
    gw.stub.control.latency_s = 2.0
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert gw.pending() == 0
    assert list(gw.engine.store.usage_records()) == []


def test_unreachable_upstream_releases_and_answers_502(make_gateway: GatewayFactory) -> None:
    """A provider that refuses connections gives 502 after the connect retries; nothing is held."""
    with socket.socket() as sock:  # a port nothing listens on once this socket closes
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    gw = make_gateway(providers={"stub": ProviderConfig(base_url=f"http://127.0.0.1:{dead}/v1")})
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    assert gw.pending() == 0


def test_client_disconnect_mid_stream_settles_the_generated_part(gw: Harness) -> None:
    """A client leaving mid-stream aborts the upstream and settles what was generated, not the ceiling."""
    control = gw.stub.control
    control.reply_words, control.chunk_delay_s = 40, 0.05
    request = {"model": MODEL, "messages": MESSAGES, "stream": True}
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", f"{gw.url}/v1/chat/completions", json=request,
            headers={"authorization": f"Bearer {gw.key}"}) as response:
        assert response.status_code == 200
        ceiling = int(response.headers["x-comptroller-ceiling-mc"])
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data:") and '"content": "' in line.replace('":"', '": "'):
                seen += 1
            if seen >= 4:
                break
    wait_for(lambda: gw.pending() == 0, "the stream's reservation to be settled")
    records = list(gw.engine.store.usage_records())
    assert len(records) == 1
    generated = records[0].usage.output_tokens
    assert 4 <= generated < 40
    assert records[0].cost_mc < ceiling
    wait_for(lambda: control.disconnects == 1, "the upstream to see the gateway leave")
    assert control.chunks_sent < 40


def test_upstream_dropping_mid_stream_settles_what_was_sent(gw: Harness) -> None:
    """An upstream that dies mid-stream: the client gets an error event, the ledger the generated part."""
    gw.stub.control.reply_words, gw.stub.control.drop_after_chunks = 20, 3
    with pytest.raises(openai.APIError):
        list(gw.client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    wait_for(lambda: gw.pending() == 0, "the reservation to be settled")
    (record,) = gw.engine.store.usage_records()
    assert 3 <= record.usage.output_tokens < 20


def test_missing_usage_settles_the_bound(gw: Harness) -> None:
    """A provider that reports no usage is charged the reserved bound: never under-counted."""
    gw.stub.control.omit_usage = True
    raw = gw.client().chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    (record,) = gw.engine.store.usage_records()
    assert record.usage.output_tokens == OUTPUT_CAP
    assert record.cost_mc == int(raw.headers["x-comptroller-ceiling-mc"])


def test_ledger_failure_fails_closed(gw: Harness) -> None:
    """When the ledger cannot be reached the call is refused with 503 and never forwarded."""
    gw.engine.store.close()
    with pytest.raises(openai.InternalServerError) as caught:
        gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.code == "ledger_unavailable"
    assert gw.stub.control.requests == []


BAD_BODIES = [
    (b"{not json", None, "invalid_json"),
    (b"\xff\xfe{}", None, "invalid_encoding"),
    (b"[]", None, "invalid_json"),
    (json.dumps({"messages": MESSAGES}).encode(), "model", "invalid_request"),
    (json.dumps({"model": MODEL}).encode(), "messages", "invalid_request"),
    (json.dumps({"model": MODEL, "messages": [{"content": "x"}]}).encode(), "messages[0].role", "invalid_request"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "n": 0}).encode(), "n", "invalid_request"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": "9"}).encode(), "max_tokens", "invalid_request"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 0}).encode(), "max_tokens", "invalid_request"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "stream": "yes"}).encode(), "stream", "invalid_request"),
    (json.dumps({"model": "no-such-model", "messages": MESSAGES}).encode(), "model", "model_not_found"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}).encode(),
     "messages[0].content[0]", "unsupported_content"),
    (b'{"model": "stub-model", "messages": [{"role": "user", "content": "x"}], "temperature": Infinity}', None,
     "invalid_json"),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_BODIES)
def test_bad_input_is_400_naming_the_parameter_and_reserves_nothing(gw: Harness, body: bytes, param: str | None,
                                                                    code: str) -> None:
    """Malformed bodies get a 400 in OpenAI's error shape naming the parameter; nothing is reserved or sent."""
    response = httpx.post(f"{gw.url}/v1/chat/completions", content=body,
                          headers={"authorization": f"Bearer {gw.key}", "content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]
    assert gw.pending() == 0
    assert gw.stub.control.requests == []


def test_body_over_the_limit_is_400(make_gateway: GatewayFactory) -> None:
    """A body larger than body_bytes_max is refused before it is parsed."""
    gw = make_gateway(body_bytes_max=2048)
    big = [{"role": "user", "content": "x" * 4096}]
    with pytest.raises(openai.BadRequestError) as caught:
        gw.client().chat.completions.create(model=MODEL, messages=big)  # type: ignore[arg-type]
    assert caught.value.code == "request_too_large"
    assert gw.stub.control.requests == []


def test_shutdown_charges_calls_in_flight_their_bound(make_gateway: GatewayFactory) -> None:
    """A worker stopping while a call waits on the upstream charges its bound (DESIGN.md rule 12), holds nothing."""
    gw = make_gateway(grace_s=0.2)
    gw.stub.control.latency_s = 3.0
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(httpx.post(f"{gw.url}/v1/chat/completions", timeout=10,
                                      json={"model": MODEL, "messages": MESSAGES},
                                      headers={"authorization": f"Bearer {gw.key}"}).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(lambda: gw.pending() == 1, "the call to be admitted and in flight")
    gw.server.__exit__(None, None, None)
    caller.join(timeout=10)
    # the cut-off call's own task charges its bound; it may land just after the server returns
    wait_for(lambda: gw.pending() == 0, "the cut-off call to be charged")
    assert gw.reserved_mc() == 0
    [charged] = list(gw.engine.store.usage_records())  # the provider may have billed it: never released to zero
    assert charged.cost_mc == charged.ceiling_mc > 0
    assert outcome and outcome[0] != 200
