"""Fixtures for the SDK tests: the gateway tests' stub upstream, and a Comptroller on a SQLite ledger."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from sdk_kit import sdk_policy
from sdk_stub import ApiStub
from stub_upstream import StubControl, StubUpstream

from comptroller.bootstrap import build_engine
from comptroller.sdk import Comptroller


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


@pytest.fixture(scope="session")
def api_stub_server() -> Iterator[ApiStub]:
    """The stub provider of every metered API (chat, responses, embeddings, completions, messages)."""
    with ApiStub() as server:
        yield server


@pytest.fixture
def apis(api_stub_server: ApiStub) -> ApiStub:
    """That stub with a fresh control (default usage, no requests seen) for this test."""
    api_stub_server.control.reset()
    return api_stub_server


@pytest.fixture
def comptroller(tmp_path: Path) -> Comptroller:
    """A Comptroller on a fresh SQLite ledger with the test policy, tenant ``acme``."""
    policy = sdk_policy()
    return Comptroller(build_engine(db_url=f"sqlite:///{tmp_path / 'ledger.db'}", policy=policy),
                       namespace=policy.namespace, tenant="acme")
