"""What the gateway tests share: the test policy, and a handle on a running gateway.

(Not in conftest.py: test modules import from here, and ``conftest`` is an ambiguous module name.)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from loopback import LoopbackServer
from stub_upstream import StubUpstream

from comptroller.config import Policy
from comptroller.engine import Engine
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


@dataclass
class Harness:
    """A running gateway and what a test needs to drive and inspect it."""

    url: str
    engine: Engine
    keys: SQLiteKeyStore
    stub: StubUpstream
    key: str
    server: LoopbackServer

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
        with sqlite3.connect(self.engine.store.path) as conn:  # type: ignore[attr-defined]
            return int(conn.execute("SELECT COUNT(*) FROM reservations WHERE state = 'pending'").fetchone()[0])


GatewayFactory = Callable[..., Harness]


def engine_namespace(policy: Policy | None) -> str:
    """The namespace calls are attributed to."""
    return (policy or stub_policy()).namespace


def wait_for(condition: object, what: str, limit_s: float = 10.0) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` after ``limit_s`` (a guard, not a timing check)."""
    deadline = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)
