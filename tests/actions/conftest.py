"""Fixtures for the action tests: gateway workers on loopback sharing one SQLite ledger and one virtual clock."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "gateway"))  # reuse the gateway tests' LoopbackServer

from actions_kit import T0, Workers
from loopback import LoopbackServer

from comptroller.bootstrap import build_engine
from comptroller.clock import VirtualClock
from comptroller.config import load_policy
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig
from comptroller.storage.keys import SQLiteKeyStore


@pytest.fixture
def make_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, int], Workers]]:
    """Start ``n`` gateway workers on one SQLite ledger with the policy text given (``[actions]`` sections)."""
    servers: list[LoopbackServer] = []

    def start(policy_toml: str, n: int = 2) -> Workers:
        policy_path = tmp_path / "policy.toml"
        policy_path.write_text('namespace = "test"\n' + policy_toml, encoding="utf-8")
        monkeypatch.setenv("COMPTROLLER_CONFIG", str(policy_path))
        policy = load_policy(policy_path)
        db = tmp_path / "ledger.db"
        clock = VirtualClock(T0)
        keys = SQLiteKeyStore(db)
        engines, urls = [], []
        for _ in range(n):
            engine = build_engine(db_url=f"sqlite:///{db}", policy=policy, clock=clock, sinks=[])
            app = create_app(engine=engine, keys=SQLiteKeyStore(db), config=GatewayConfig(admin_key_env=None),
                             namespace="test")
            server = LoopbackServer(app).__enter__()
            servers.append(server)
            engines.append(engine)
            urls.append(server.url)
        return Workers(urls, engines, keys, clock)

    yield start
    for server in servers:
        server.__exit__(None, None, None)
