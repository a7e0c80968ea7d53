"""What the gateway tests share: the test policy, and a handle on a running gateway.

(Not in conftest.py: test modules import from here, and ``conftest`` is an ambiguous module name.)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from loopback import LoopbackServer
from stub_upstream import StubUpstream

from comptroller.config import Policy
from comptroller.engine import Engine
from comptroller.gateway.config import ProviderConfig
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

    def anthropic(self, key: str | None = None, **headers: str) -> anthropic.Anthropic:
        """An Anthropic client on the gateway (key in ``x-api-key``, as the client sends it; no retries)."""
        return anthropic.Anthropic(base_url=self.url, api_key=key or self.key, max_retries=0,
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

CLAUDE = "claude-stub"    # served by a kind = "anthropic" provider
CACHED = "cached-stub"    # OpenAI family, with a cache-read price
TIERED = "tiered-stub"    # OpenAI family, a pricier tier above TIER_START input tokens
PRICIER = "pricier-stub"  # what a provider may serve instead of the model asked for
TIER_START = 20
MC_PER_TOKEN = {  # (input, output, cache read, cache write 5m, cache write 1h): mc per token = USD/Mtok / 10
    CLAUDE: (100, 200, 10, 125, 200), CACHED: (100, 200, 10, 100, 100), PRICIER: (300, 600, 300, 300, 300),
}
TIER_MC_PER_TOKEN = ((100, 200), (300, 400))  # TIERED: at most / above TIER_START input tokens


def _usd_mtok(mc_per_token: int) -> str:
    return str(mc_per_token * 10)


def api_policy(**overrides: Any) -> Policy:
    """:func:`stub_policy` plus an Anthropic-family model, a cache-priced one, a tiered one and a pricier one."""
    prices: dict[str, Any] = {name: {"input_mtok": _usd_mtok(r[0]), "output_mtok": _usd_mtok(r[1]),
                                     "cache_read_mtok": _usd_mtok(r[2]), "cache_write_mtok": _usd_mtok(r[3]),
                                     "cache_write_1h_mtok": _usd_mtok(r[4])} for name, r in MC_PER_TOKEN.items()}
    (low_in, low_out), (high_in, high_out) = TIER_MC_PER_TOKEN
    prices[TIERED] = {"input_mtok": {"base": _usd_mtok(low_in), "tiers": [{"start": TIER_START,
                                                                           "price": _usd_mtok(high_in)}]},
                      "output_mtok": {"base": _usd_mtok(low_out), "tiers": [{"start": TIER_START,
                                                                             "price": _usd_mtok(high_out)}]}}
    prices[MODEL] = prices["other-model"] = {"input_mtok": _usd_mtok(INPUT_MC_PER_TOKEN),
                                             "output_mtok": _usd_mtok(OUTPUT_MC_PER_TOKEN)}
    return stub_policy(prices=prices, **overrides)


def api_gateway(make_gateway: GatewayFactory, stub: StubUpstream, policy: Policy | None = None,
                **gateway: Any) -> Harness:
    """A gateway with an OpenAI-family provider and an Anthropic-family one, both the stub."""
    providers = {"stub": ProviderConfig(base_url=stub.base_url),
                 "claude": ProviderConfig(kind="anthropic", base_url=stub.base_url)}
    models = {MODEL: "stub", "other-model": "stub", CACHED: "stub", TIERED: "stub", PRICIER: "stub", CLAUDE: "claude"}
    return make_gateway(policy or api_policy(), providers=providers, models=models, **gateway)


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
