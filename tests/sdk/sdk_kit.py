"""What the SDK tests share: the test policy and its per-token prices.

(Not in conftest.py: test modules import from here, and ``conftest`` is an ambiguous module name.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def comptroller_with(tmp_path: Path, policy: Policy, clock: VirtualClock | None = None) -> Comptroller:
    """A Comptroller on a fresh ledger with ``policy`` (and a virtual clock if given)."""
    engine = build_engine(db_url=f"sqlite:///{tmp_path / 'other.db'}", policy=policy, clock=clock)
    return Comptroller(engine, namespace=policy.namespace, tenant="acme")
