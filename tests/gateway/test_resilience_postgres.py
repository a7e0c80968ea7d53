"""PostgreSQL outage behind the gateway: refused and terminated connections give 503 JSON, then a quick recovery.

The gateway's ledger and key store reach PostgreSQL through a TCP proxy on loopback that
the test owns. Stopping the proxy closes its listening socket (new connections are
refused) and cuts every open connection (the pooled ones die mid-session), the faults a
database restart or a network partition makes, while the shared server keeps running
for everyone else.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_kit import MODEL, stub_policy, wait_for
from loopback import LoopbackServer
from stub_upstream import StubUpstream

from comptroller.bootstrap import build_engine
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.storage.keys import new_key
from comptroller.storage.postgres import PostgresKeyStore, PostgresStore
from postgres.pg_kit import PG_URL, new_schema

pytestmark = pytest.mark.slow

BOUND_S = 1.0
RECOVERY_S_MAX = 2.0  # issue 12: after the database returns, the first call succeeds within 2 s


class Proxy:
    """A TCP forwarder 127.0.0.1:port -> PostgreSQL that the test can stop (refuse + cut) and start again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Listen and forward."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            listener.close()
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            with self._lock:
                cut = self._listener is not listener  # stopped meanwhile: this one is cut too
                if not cut:
                    self._pairs.append((client, server))
            if cut:
                client.close()
                server.close()
                continue
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        # a selector (epoll), not select.select: late in a long test run this process's descriptors pass
        # 1,024, where select() raises ValueError and every forwarded connection would be cut at once
        selector = selectors.DefaultSelector()
        try:
            selector.register(a, selectors.EVENT_READ)
            selector.register(b, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select(1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            a.close()
            b.close()


@pytest.fixture
def proxied(stub: StubUpstream, tmp_path: Path) -> Iterator[tuple[Proxy, str, str, str]]:
    """A gateway whose ledger and key store go through a proxy: (proxy, gateway url, api key, an unused key)."""
    del tmp_path
    stub.control.reset()
    host, port = PG_URL.split("@", 1)[1].split("/", 1)[0].split(":")
    proxy = Proxy((host, int(port)))
    proxy.start()
    url = PG_URL.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
    schema = new_schema()
    store = PostgresStore(url, schema=schema, min_size=1, max_size=4, timeout_s=BOUND_S, connect_timeout_s=1,
                          durable=False)
    keys = PostgresKeyStore(url, schema=schema, timeout_s=BOUND_S)
    record, key = new_key(tenant="acme")
    keys.add(record)
    unused, unused_key = new_key(tenant="acme")
    keys.add(unused)
    policy = stub_policy()
    engine = build_engine(db_url=url, policy=policy, store=store)
    config = GatewayConfig(providers={"stub": ProviderConfig(base_url=stub.base_url)}, models={MODEL: "stub"},
                           admin_key_env=None, ledger_timeout_s=BOUND_S)
    app = create_app(engine=engine, keys=keys, config=config, namespace=policy.namespace)
    try:
        with LoopbackServer(app) as server:
            yield proxy, server.url, key, unused_key
    finally:
        proxy.stop()
        store.close()
        keys.close()


def chat(client: httpx.Client, text: str) -> httpx.Response:
    """One plain chat call."""
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": text}]})


def test_postgres_outage_is_503_json_then_the_first_call_after_recovery_succeeds(
        proxied: tuple[Proxy, str, str, str], stub: StubUpstream) -> None:
    """Refused and cut connections: chats and key checks answer 503 ledger_unavailable; back within 2 s after."""
    proxy, url, key, unused_key = proxied
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=BOUND_S + 10) as client:
        assert chat(client, "before").status_code == 200
        recoveries = []
        for outage in range(2):
            proxy.stop()
            down = [chat(client, f"down {outage} {i}") for i in range(3)]
            assert [r.status_code for r in down] == [503] * 3, [r.text for r in down]
            assert all(r.json()["error"]["code"] == "ledger_unavailable" for r in down)
            unchecked = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {unused_key}"},
                                    json={"model": MODEL, "messages": [{"role": "user", "content": "who am I"}]})
            assert unchecked.status_code == 503  # a key not in the cache cannot be checked: not a 401
            assert unchecked.json()["error"]["code"] == "ledger_unavailable"
            wait_for(lambda: client.get("/healthz").json()["ledger"]["reachable"] is False, "the probe to see it")
            proxy.start()
            back = time.monotonic()
            while chat(client, f"after {outage}").status_code != 200:
                assert time.monotonic() - back < 30, "no recovery within 30 s"
            recoveries.append(time.monotonic() - back)
    assert len(stub.control.requests) == 3  # nothing refused went upstream
    assert max(recoveries) < RECOVERY_S_MAX, recoveries
