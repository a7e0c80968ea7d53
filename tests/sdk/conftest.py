"""Fixtures for the SDK tests: the gateway tests' stub upstream, and a Comptroller on a SQLite ledger."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from stub_upstream import StubControl, StubUpstream

from comptroller.bootstrap import build_engine
from comptroller.clock import VirtualClock
from comptroller.config import Policy
from comptroller.sdk import Comptroller

MODEL = "stub-model"
CAP = 32
RATES_MC = {"input": 100, "output": 200, "cache_read": 50, "cache_write": 125}  # per token


def sdk_policy(**overrides: Any) -> Policy:
    """A policy pricing the stub's model at round millicents per token (USD per Mtok x 100)."""
    price = {"input_mtok": "1000", "output_mtok": "2000", "cache_read_mtok": "500", "cache_write_mtok": "1250"}
    return Policy.model_validate({"namespace": "sdk", "output_cap_tokens": CAP, "prices": {MODEL: price},
                                  **overrides})


@pytest.fixture(scope="session")
def upstream() -> Iterator[StubUpstream]:
    """The stub provider (OpenAI chat completions and Anthropic messages)."""
    with StubUpstream(StubControl()) as server:
        yield server


@pytest.fixture
def stub(upstream: StubUpstream) -> StubUpstream:
    """The stub, reset for this test."""
    upstream.control.reset()
    return upstream


@pytest.fixture
def comptroller(tmp_path: Path) -> Comptroller:
    """A Comptroller on a fresh SQLite ledger with the test policy, tenant ``acme``."""
    policy = sdk_policy()
    return Comptroller(build_engine(db_url=f"sqlite:///{tmp_path / 'ledger.db'}", policy=policy),
                       namespace=policy.namespace, tenant="acme")


def comptroller_with(tmp_path: Path, policy: Policy, clock: VirtualClock | None = None) -> Comptroller:
    """A Comptroller on a fresh ledger with ``policy`` (and a virtual clock if given)."""
    engine = build_engine(db_url=f"sqlite:///{tmp_path / 'other.db'}", policy=policy, clock=clock)
    return Comptroller(engine, namespace=policy.namespace, tenant="acme")
