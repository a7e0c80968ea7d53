"""Fixtures for the gateway tests: a stub upstream and a real gateway, both on loopback.

The gateway under test is the real app (:func:`comptroller.gateway.app.create_app`) on a
SQLite ledger in the test's directory, served by uvicorn in a thread; tests drive it
with the official ``openai`` client and inspect the ledger directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_kit import MODEL, GatewayFactory, Harness, engine_namespace, stub_policy
from loopback import LoopbackServer
from stub_upstream import StubControl, StubUpstream

from comptroller.bootstrap import build_engine
from comptroller.config import Policy
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.storage.keys import SQLiteKeyStore, new_key


@pytest.fixture(scope="session")
def stub() -> Iterator[StubUpstream]:
    """One stub upstream for the session; its control is reset by ``gateway``."""
    with StubUpstream(StubControl()) as server:
        yield server


@pytest.fixture
def make_gateway(stub: StubUpstream, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start a gateway with a given policy and ``[gateway]`` overrides (one per test)."""
    stub.control.reset()
    stack: list[LoopbackServer] = []
    closers: list[Any] = []

    def start(policy: Policy | None = None, *, grace_s: float = 5.0, **gateway: Any) -> Harness:
        db = tmp_path / f"ledger{len(stack)}.db"
        policy = policy or stub_policy()
        engine = build_engine(db_url=f"sqlite:///{db}", policy=policy)
        keys = SQLiteKeyStore(db)
        settings: dict[str, Any] = {"providers": {"stub": ProviderConfig(base_url=stub.base_url)},
                                    "models": {MODEL: "stub", "other-model": "stub"}, "admin_key_env": None,
                                    **gateway}
        config = GatewayConfig(**settings)
        app = create_app(engine=engine, keys=keys, config=config, namespace=engine_namespace(policy),
                         routing=policy.routing_config(engine.prices), groups=policy.group_definitions().values())
        server = LoopbackServer(app, grace_s=grace_s).__enter__()
        stack.append(server)
        closers.extend([engine.close, keys.close, engine.store.close])
        record, plaintext = new_key(tenant="acme")
        keys.add(record)
        return Harness(url=server.url, engine=engine, keys=keys, stub=stub, key=plaintext, server=server)

    yield start
    for server in stack:
        server.__exit__(None, None, None)
    for close in closers:  # after every server: tests read the ledger after stopping one
        close()


@pytest.fixture
def gw(make_gateway: GatewayFactory) -> Harness:
    """A gateway with the default test policy and no budgets."""
    return make_gateway()
