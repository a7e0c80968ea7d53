"""On PostgreSQL too, a response served outside the agent's pin refuses the agent's next call on another engine."""

from __future__ import annotations

import pytest
from pg_kit import PG_URL, new_schema, require_postgres

from comptroller.bootstrap import build_engine
from comptroller.clock import SystemClock
from comptroller.config import Policy
from comptroller.domain.codes import Code
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest
from comptroller.storage.postgres import PostgresStore

PINNED, OTHER = "pinned-model", "other-model"
POLICY = Policy.model_validate({"namespace": "test", "output_cap_tokens": 16,
                                "pinning": {"agents": {"writer": {"models": [PINNED]}}},
                                "prices": {PINNED: {"input_mtok": "1", "output_mtok": "2"},
                                           OTHER: {"input_mtok": "10", "output_mtok": "20"}}})


@pytest.fixture(autouse=True)
def _postgres() -> None:
    require_postgres()


def test_a_drift_settled_on_one_engine_refuses_on_another() -> None:
    """Engine A settles a call served by a model outside the pin; engine B, on the same database, refuses next."""
    schema = new_schema()
    store_a, store_b = PostgresStore(PG_URL, schema=schema, min_size=1, max_size=2), None
    try:
        engine_a = build_engine(db_url="unused://", policy=POLICY, store=store_a, clock=SystemClock())
        call = CallRequest(attribution=Attribution(namespace="test", tenant="acme", agent="writer"), model=PINNED,
                           input_tokens_max=10)
        admission = engine_a.admit(call)
        assert admission.reservation is not None
        settled = engine_a.settle(admission.reservation, Usage(input_tokens=10, output_tokens=4), served_model=OTHER)
        assert settled.code is Code.SETTLED
        store_b = PostgresStore(PG_URL, schema=schema, min_size=1, max_size=2)  # another worker's pool
        engine_b = build_engine(db_url="unused://", policy=POLICY, store=store_b, clock=SystemClock())
        refused = engine_b.admit(call)
        assert refused.verdict is not None and refused.verdict.detector == "served_not_pinned"
        assert refused.verdict.evidence["served_model"] == OTHER
    finally:
        store_a.close()
        if store_b is not None:
            store_b.close()
