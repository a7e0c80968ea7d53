"""Every call through the gateway records the id of the API key it came with (spend per key, issue 15)."""

from __future__ import annotations

from collections import Counter

import openai
import pytest
from gateway_kit import MODEL, GatewayFactory, stub_policy


def test_each_usage_row_names_the_key_that_made_the_call(make_gateway: GatewayFactory) -> None:
    """Two keys of one tenant and one of another: each settled row carries its own key's public id."""
    gw = make_gateway(stub_policy())
    keys = [gw.new_key("acme"), gw.new_key("acme"), gw.new_key("globex")]
    calls = {0: 3, 1: 1, 2: 2}
    for index, count in calls.items():
        for i in range(count):
            gw.client(keys[index]).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"call {index}-{i}: name a colour"}])
    rows = list(gw.engine.store.usage_records())
    key_ids = [k.split(".")[0].removeprefix("ck-") for k in keys]
    assert Counter(r.attribution.key_id for r in rows) == {key_ids[i]: n for i, n in calls.items()}
    assert {r.attribution.key_id: r.attribution.tenant for r in rows} == {
        key_ids[0]: "acme", key_ids[1]: "acme", key_ids[2]: "globex"}
    assert all(r.cost_mc > 0 for r in rows)


def test_a_refused_calls_event_names_its_key(make_gateway: GatewayFactory) -> None:
    """A call refused by a budget leaves a refusal event whose detail names the key (the UI's key filter)."""
    gw = make_gateway(stub_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 1, "period": "total"}]))
    key = gw.new_key("acme")
    with pytest.raises(openai.RateLimitError):
        gw.client(key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    (event,) = [e for e in gw.engine.store.events("refusal") if e.code == "budget_exceeded"]
    assert event.detail["key_id"] == key.split(".")[0].removeprefix("ck-")
