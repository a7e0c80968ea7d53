"""A worker loads its models' exact tokenizer and freezes start-up's objects before it serves."""

from __future__ import annotations

import gc

from gateway_kit import MODEL, GatewayFactory

from comptroller.exact_input import available
from comptroller.gateway.warmup import load_encodings


def test_the_vocabularies_of_configured_openai_models_are_loaded_and_no_others() -> None:
    """gpt-4o-mini needs o200k and gpt-4 cl100k; a Claude model and an unknown one need none."""
    expected = {"o200k_base", "cl100k_base"} if available() else set()
    assert load_encodings(["gpt-4o-mini", "gpt-4", "claude-3-5-sonnet", "stub-model"]) == expected
    assert load_encodings(["claude-3-5-sonnet", "stub-model"]) == set()


def test_a_started_worker_has_frozen_its_start_up_objects(make_gateway: GatewayFactory) -> None:
    """Once a gateway serves, the objects of its start-up are out of the collector's scans."""
    gc.unfreeze()
    gw = make_gateway()
    assert gc.get_freeze_count() > 0
    gw.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert len(list(gw.engine.store.usage_records())) == 1
