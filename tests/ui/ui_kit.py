"""What the UI tests share: a gateway on a ledger filled by replaying the shipped traces, and a UI login.

The ledger is filled once per session by ``comptroller replay data/traces/chatdev_warehouse.jsonl
--policy policies/chatdev.toml`` (tenant ``chatdev``, namespace ``replay``); each test gets a
copy of the file under a real gateway (uvicorn on loopback) whose upstream is the gateway
tests' stub. A second tenant, ``acme``, makes calls through the gateway.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "gateway"))  # the loopback server and the stub upstream

from loopback import LoopbackServer  # noqa: E402
from stub_upstream import StubUpstream  # noqa: E402

from comptroller.config import Policy  # noqa: E402
from comptroller.engine import Engine  # noqa: E402
from comptroller.gateway.config import GatewayConfig  # noqa: E402
from comptroller.storage.keys import SQLiteKeyStore, new_key  # noqa: E402

__all__ = [
    "CHEAP",
    "HOT_AGENT",
    "MODEL",
    "POLICY",
    "ROOT",
    "STRONG",
    "TRACES",
    "LoopbackServer",
    "StubUpstream",
    "UiGateway",
    "csrf_of",
    "gateway_policy",
    "login_client",
]

TRACES = ROOT / "data" / "traces" / "chatdev_warehouse.jsonl"
POLICY = ROOT / "policies" / "chatdev.toml"
MODEL = "stub-model"
STUB_PRICE = {"input_mtok": "1000", "output_mtok": "2000",  # 100 mc per input token, 200 per output token
              "cache_read_mtok": "100"}  # 10 mc per cache-read token
HOT_AGENT = "hot"  # acme's agent whose breaker opens on its first call (threshold 1 mc, one window)
CHEAP, STRONG = "tier1-model", "tier2-model"  # the two tiers of cascade ``support``
SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}
VALID, INVALID = '{"answer": "42"}', "Sure! It is 42, I think."


def gateway_policy() -> Policy:
    """The replay's policy (namespace ``replay``, its budgets) plus a price for the stub's model."""
    data: dict[str, Any] = tomllib.loads(POLICY.read_text(encoding="utf-8"))
    data["prices"] = {**data.get("prices", {}), MODEL: STUB_PRICE, STRONG: STUB_PRICE,
                      CHEAP: {"input_mtok": "100", "output_mtok": "200"}}
    tiers = [{"name": "cheap", "models": [CHEAP], "gates": [{"kind": "json_schema"}]},
             {"name": "strong", "models": [STRONG], "gates": [{"kind": "json_schema"}]}]
    data["cascades"] = {"support": {"tiers": tiers}}
    data["breakers"] = {"overrides": [{"level": "agent", "tenant": "acme", "agent": HOT_AGENT, "threshold_mc": 1,
                                       "trip_windows": 1, "cooldown_s_start": 1, "cooldown_s_max": 1}]}
    return Policy.model_validate(data)


@dataclass
class UiGateway:
    """A running gateway on a replayed ledger, with an admin key and one key per tenant."""

    url: str
    engine: Engine
    keys: SQLiteKeyStore
    stub: StubUpstream
    admin_key: str
    chatdev_key: str
    acme_key: str
    config: GatewayConfig

    def client(self, key: str | None = None) -> openai.OpenAI:
        """An OpenAI client on the gateway (no retries: each call is one request)."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.acme_key, max_retries=0, timeout=20)

    def call(self, key: str | None = None, max_tokens: int = 16, conversation: str = "c1",
             agent: str | None = None) -> Any:
        """One chat completion as ``acme`` (or ``key``), as ``agent`` when given; raises openai.APIStatusError
        when refused."""
        headers = {"X-Comptroller-Conversation": conversation, "X-Comptroller-Task": f"task-{conversation}"}
        if agent is not None:
            headers["X-Comptroller-Agent"] = agent
        return self.client(key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello there"}],
            max_tokens=max_tokens, extra_headers=headers)

    def ask_cascade(self, *, cheap_answers: bool) -> Any:
        """One request through cascade ``support`` as acme; the cheap tier answers valid JSON or not."""
        self.stub.control.replies.update({CHEAP: VALID if cheap_answers else INVALID, STRONG: VALID})
        return self.client().chat.completions.create(
            model="cascade/support", max_tokens=32, messages=[{"role": "user", "content": "six times seven?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}})

    def add_key(self, tenant: str, *, admin: bool = False, name: str = "") -> str:
        """Store a new key (named ``name``) and return its plaintext."""
        record, plaintext = new_key(tenant=tenant, admin=admin, name=name)
        self.keys.add(record)
        return plaintext


def login_client(url: str, key: str) -> httpx.Client:
    """An HTTP client logged in to ``/ui`` with ``key`` (the login form's CSRF token included)."""
    client = httpx.Client(base_url=url, timeout=20, follow_redirects=False)
    page = client.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None, page.text
    answer = client.post("/ui/login", data={"key": key, "csrf": token.group(1)})
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(html: str) -> str:
    """The CSRF token a page carries (in its forms, or in the header htmx sends)."""
    token = re.search(r'(?:name="csrf" value="|"X-CSRF-Token": ")([^"]+)"', html)
    assert token is not None
    return token.group(1)
