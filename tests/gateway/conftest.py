"""Fixtures for the gateway tests: a stub upstream and a real gateway, both on loopback.

The gateway under test is the real app (:func:`comptroller.gateway.app.create_app`) on a
SQLite ledger in the test's directory, served by uvicorn in a thread; tests drive it
with the official ``openai`` client and inspect the ledger directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from loopback import LoopbackServer
from stub_upstream import StubControl, StubUpstream

from comptroller.bootstrap import build_engine
from comptroller.config import Policy
from comptroller.engine import Engine
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.storage.keys import SQLiteKeyStore, new_key

MODEL = "stub-model"
INPUT_MC_PER_TOKEN = 100   # input_mtok "1000" USD: 1000 * 100_000 mc / 1e6 tokens
OUTPUT_MC_PER_TOKEN = 200  # output_mtok "2000" USD
OUTPUT_CAP = 64


def stub_policy(**overrides: Any) -> Policy:
    """A policy pricing the stub's model at round millicents per token, with an output cap."""
    data: dict[str, Any] = {
        "namespace": "test", "output_cap_tokens": OUTPUT_CAP,
        "prices": {MODEL: {"input_mtok": "1000", "output_mtok": "2000"},
                   "other-model": {"input_mtok": "1000", "output_mtok": "2000"}},
        **overrides,
    }
    return Policy.model_validate(data)


@pytest.fixture(scope="session")
def stub() -> Iterator[StubUpstream]:
    """One stub upstream for the session; its control is reset by ``gateway``."""
    with StubUpstream(StubControl()) as server:
        yield server


@dataclass
class Harness:
    """A running gateway and what a test needs to drive and inspect it."""

    url: str
    engine: Engine
    keys: SQLiteKeyStore
    stub: StubUpstream
    key: str

    def client(self, key: str | None = None, **headers: str) -> openai.OpenAI:
        """An OpenAI client on the gateway (no retries, so each call is one request)."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key, max_retries=0,
                             default_headers=headers or None, timeout=20)

    def new_key(self, tenant: str = "acme", agent: str | None = None, **kwargs: Any) -> str:
        """Store a new key and return its plaintext."""
        record, plaintext = new_key(tenant=tenant, agent=agent, **kwargs)
        self.keys.add(record)
        return plaintext

    def reserved_mc(self) -> int:
        """Money held on every account of the ledger."""
        return sum(a.reserved_mc for a in self.engine.store.accounts())

    def pending(self) -> int:
        """Reservations neither settled nor released, by reading the SQLite file."""
        import sqlite3  # noqa: PLC0415 (only this check reads the file directly)

        with sqlite3.connect(self.engine.store.path) as conn:  # type: ignore[attr-defined]
            return int(conn.execute("SELECT COUNT(*) FROM reservations WHERE state = 'pending'").fetchone()[0])


GatewayFactory = Callable[..., Harness]


@pytest.fixture
def make_gateway(stub: StubUpstream, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start a gateway with a given policy and ``[gateway]`` overrides (one per test)."""
    stub.control.reset()
    stack: list[LoopbackServer] = []

    def start(policy: Policy | None = None, **gateway: Any) -> Harness:
        db = tmp_path / f"ledger{len(stack)}.db"
        engine = build_engine(db_url=f"sqlite:///{db}", policy=policy or stub_policy())
        keys = SQLiteKeyStore(db)
        settings: dict[str, Any] = {"providers": {"stub": ProviderConfig(base_url=stub.base_url)},
                                    "models": {MODEL: "stub", "other-model": "stub"}, "admin_key_env": None,
                                    **gateway}
        config = GatewayConfig(**settings)
        app = create_app(engine=engine, keys=keys, config=config, namespace=engine_namespace(policy))
        server = LoopbackServer(app).__enter__()
        stack.append(server)
        record, plaintext = new_key(tenant="acme")
        keys.add(record)
        return Harness(url=server.url, engine=engine, keys=keys, stub=stub, key=plaintext)

    yield start
    for server in stack:
        server.__exit__(None, None, None)


def engine_namespace(policy: Policy | None) -> str:
    """The namespace calls are attributed to."""
    return (policy or stub_policy()).namespace


@pytest.fixture
def gw(make_gateway: GatewayFactory) -> Harness:
    """A gateway with the default test policy and no budgets."""
    return make_gateway()
