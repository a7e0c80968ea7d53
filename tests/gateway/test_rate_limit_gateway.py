"""RPM limits through the gateway: shared by 2 workers on one ledger, refused with 429 and Retry-After.

Two set-ups: two in-process workers (each its own engine and SQLite connection on one file)
sharing one virtual clock, so the window is exact; and `comptroller serve --workers 2` as a real
process on the system clock, with a limit whose emission interval (20 s) is far longer than the
burst of calls takes.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest
from gateway_kit import MODEL, OUTPUT_CAP, stub_policy
from loopback import LoopbackServer
from stub_upstream import StubUpstream

from comptroller.bootstrap import build_engine
from comptroller.clock import VirtualClock
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.storage.keys import SQLiteKeyStore, new_key
from serve_kit import serve_process

N = 3
CALLS = 4 * N
START = datetime(2026, 3, 2, 12, tzinfo=UTC)
RACE_TIMEOUT_S = 60.0


def _key(db: Path) -> str:
    keys = SQLiteKeyStore(db)
    record, plaintext = new_key(tenant="acme", agent="writer")
    keys.add(record)
    keys.close()
    return plaintext


def _post(url: str, key: str) -> httpx.Response:
    """One chat call on a fresh connection."""
    return httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}]})


def _burst(urls: list[str], key: str) -> list[httpx.Response]:
    """CALLS calls released together, alternating between the workers."""
    barrier = threading.Barrier(CALLS, timeout=RACE_TIMEOUT_S)

    def call(i: int) -> httpx.Response:
        barrier.wait()
        return _post(urls[i % len(urls)], key)

    with ThreadPoolExecutor(max_workers=CALLS) as pool:
        return list(pool.map(call, range(CALLS), timeout=RACE_TIMEOUT_S))


def _check_refusals(responses: list[httpx.Response]) -> None:
    """Exactly N served; every other call a 429 rate_limited the clients may retry after Retry-After <= 60 s."""
    assert Counter(r.status_code for r in responses) == Counter({200: N, 429: CALLS - N})
    for refused in (r for r in responses if r.status_code == 429):
        error = refused.json()["error"]
        assert (error["code"], error["rule"], error["evidence"]["limit_per_minute"]) == ("rate_limited",
                                                                                         "rate_limit", N)
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "x-should-retry" not in refused.headers


def test_an_rpm_limit_admits_exactly_n_across_two_workers(stub: StubUpstream, tmp_path: Path) -> None:
    """Two workers on one ledger and one virtual clock: an RPM limit of N serves exactly N of a burst of 4N,
    one more after one emission interval (60/N s), and a refused call took no slot."""
    stub.control.reset()
    db = tmp_path / "ledger.db"
    key = _key(db)
    clock = VirtualClock(START)
    policy = stub_policy(rate_limits=[{"level": "key", "rpm": N}])
    config = GatewayConfig(providers={"stub": ProviderConfig(base_url=stub.base_url)}, models={MODEL: "stub"},
                           admin_key_env=None)
    apps = [create_app(engine=build_engine(db_url=f"sqlite:///{db}", policy=policy, clock=clock, sinks=[]),
                       keys=SQLiteKeyStore(db), config=config, namespace=policy.namespace) for _ in range(2)]
    with LoopbackServer(apps[0]) as one, LoopbackServer(apps[1]) as two:
        _check_refusals(_burst([one.url, two.url], key))
        assert len(stub.control.requests) == N  # refused calls never reached the provider
        clock.advance(60 / N - 0.001)
        assert _post(two.url, key).status_code == 429  # not yet: refusals took no slot, none was freed
        clock.advance(0.001)
        assert _post(two.url, key).status_code == 200
        assert _post(one.url, key).status_code == 429


def test_the_openai_client_sees_a_rate_limit_error_with_retry_after(stub: StubUpstream, tmp_path: Path) -> None:
    """The official client raises RateLimitError with our code; the response carries Retry-After."""
    stub.control.reset()
    db = tmp_path / "ledger.db"
    key = _key(db)
    policy = stub_policy(rate_limits=[{"level": "tenant", "tenant": "acme", "rpm": 1}])
    config = GatewayConfig(providers={"stub": ProviderConfig(base_url=stub.base_url)}, models={MODEL: "stub"},
                           admin_key_env=None)
    app = create_app(engine=build_engine(db_url=f"sqlite:///{db}", policy=policy, clock=VirtualClock(START),
                                         sinks=[]), keys=SQLiteKeyStore(db), config=config, namespace=policy.namespace)
    with LoopbackServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=20)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "rate_limited"
    assert caught.value.response.headers["retry-after"] == "60"


@pytest.mark.timeout(240)
def test_an_rpm_limit_admits_exactly_n_on_serve_with_two_workers(stub: StubUpstream, tmp_path: Path) -> None:
    """`comptroller serve --workers 2` with an RPM limit of 3 per key: a burst of 12 serves exactly 3 (the next
    slot opens 20 s later), whichever worker takes each call."""
    stub.control.reset()
    db = tmp_path / "ledger.db"
    key = _key(db)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
namespace = "test"
output_cap_tokens = {OUTPUT_CAP}
[prices."{MODEL}"]
input_mtok = "1000"
output_mtok = "2000"
[[rate_limits]]
level = "key"
rpm = {N}
[gateway.providers.stub]
base_url = "{stub.base_url}"
[gateway.models]
"{MODEL}" = "stub"
""", encoding="utf-8")
    with serve_process(config, f"sqlite:///{db}", workers=2) as (_, url):
        _check_refusals(_burst([url], key))
