"""/metrics' tenant families stay bounded: the top N tenants by settled cost plus ``other``, summing to the total.

1,000 tenants are counted through :meth:`GatewayMetrics.observe_settled`; the exposition is parsed
back with prometheus_client's own parser. Expected top sets and totals are computed in the test
from the costs it fed. The multiprocess case runs two real worker processes writing to one
``PROMETHEUS_MULTIPROC_DIR`` and scrapes from a third.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from gateway_kit import MODEL, GatewayFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from comptroller.gateway.config import GatewayConfig
from comptroller.gateway.metrics import OTHER_TENANTS, GatewayMetrics, top_tenants

TENANTS = 1000


def _cost(i: int) -> int:
    """A spread of costs with ties (every 7th tenant shares a cost with a neighbour)."""
    return (i * 7919) % 5003 + 1


def _series(text: str) -> dict[str, dict[tuple[str, ...], float]]:
    out: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        if family.name.startswith("comptroller_tenant"):
            for sample in family.samples:
                out[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _check(text: str, costs: dict[str, int], calls: dict[str, int], top_n: int) -> None:
    series = _series(text)
    assert not any("raw" in name for name in series), "the raw per-tenant counters leaked into the exposition"
    cost = {dict(k)["tenant"]: v for k, v in series["comptroller_tenant_cost_mc"].items()}
    assert len(cost) == min(top_n, len(costs)) + (len(costs) > top_n)
    assert sum(cost.values()) == sum(costs.values())
    expected_top = sorted(costs, key=lambda t: (-costs[t], t))[:top_n]
    assert set(cost) - {OTHER_TENANTS} == set(expected_top)
    for tenant in expected_top:
        assert cost[tenant] == costs[tenant]
    assert cost.get(OTHER_TENANTS, 0) == sum(v for t, v in costs.items() if t not in expected_top)
    count = {dict(k)["tenant"]: v for k, v in series["comptroller_tenant_calls"].items()}
    assert set(count) == set(cost) and sum(count.values()) == sum(calls.values())
    tokens = series["comptroller_tenant_tokens"]
    assert len(tokens) == 2 * len(cost)


@pytest.mark.parametrize("top_n", [1, 20, 999, 1000])
def test_a_thousand_tenants_give_at_most_n_plus_one_series_summing_to_the_total(top_n: int) -> None:
    """1,000 tenants, N labels: N + 1 series per family (N when all fit), the top N by cost, sums equal the total."""
    metrics = GatewayMetrics(tenants_top=top_n)
    costs: dict[str, int] = defaultdict(int)
    calls: dict[str, int] = defaultdict(int)
    for i in range(TENANTS):
        tenant = f"tenant-{i:04d}"
        for part in (_cost(i) // 2, _cost(i) - _cost(i) // 2):  # two calls each
            metrics.observe_settled(tenant, cost_mc=part, input_tokens=10, output_tokens=3)
            costs[tenant] += part
            calls[tenant] += 1
    _check(metrics.exposition().decode(), costs, calls, top_n)


@settings(max_examples=80, deadline=None)
@given(costs=st.dictionaries(st.text(min_size=1, max_size=6), st.integers(0, 10**6), max_size=60),
       top_n=st.integers(1, 30))
def test_folding_keeps_the_total_and_bounds_the_labels(costs: dict[str, int], top_n: int) -> None:
    """Any tenants and costs: the labels are the top N (ties by name) plus other, and nothing is lost."""
    metrics = GatewayMetrics(tenants_top=top_n)
    for tenant, cost in costs.items():
        metrics.observe_settled(tenant, cost_mc=cost, input_tokens=1, output_tokens=1)
    series = _series(metrics.exposition().decode())
    folded = {dict(k)["tenant"]: v for k, v in series["comptroller_tenant_cost_mc"].items()}
    assert len(folded) <= top_n + 1
    assert sum(folded.values()) == sum(costs.values())
    assert set(folded) - {OTHER_TENANTS} == top_tenants({t: float(c) for t, c in costs.items()}, top_n)


_WORKER = """
import json, sys
from comptroller.gateway.metrics import GatewayMetrics
metrics = GatewayMetrics(tenants_top=int(sys.argv[1]))
for tenant, cost in json.loads(sys.argv[2]).items():
    metrics.observe_settled(tenant, cost_mc=cost, input_tokens=5, output_tokens=2)
if sys.argv[3] == "scrape":
    sys.stdout.write(metrics.exposition().decode())
"""


def test_two_workers_are_summed_before_the_top_n_is_chosen(tmp_path: Path) -> None:
    """Workers' totals are added per tenant across processes, then folded: a tenant split across two workers
    ranks by its sum, and the scrape holds N + 1 series whose sum is both workers' total."""
    top_n = 20
    first = {f"tenant-{i:04d}": _cost(i) for i in range(0, TENANTS, 2)}
    second = {f"tenant-{i:04d}": _cost(i) for i in range(1, TENANTS, 2)}
    second["tenant-0000"] = 10_000  # in both workers: its label must carry the sum, 10_000 + _cost(0)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for part in (first, second):
        subprocess.run([sys.executable, "-c", _WORKER, str(top_n), json.dumps(part), "count"], env=env, check=True,
                       timeout=120)
    scrape = subprocess.run([sys.executable, "-c", _WORKER, str(top_n), "{}", "scrape"], env=env, check=True,
                            timeout=120, capture_output=True, text=True)
    costs: dict[str, int] = defaultdict(int)
    for part in (first, second):
        for tenant, cost in part.items():
            costs[tenant] += cost
    calls = {t: (t in first) + (t in second) for t in costs}
    _check(scrape.stdout, costs, calls, top_n)
    assert "tenant-0000" in scrape.stdout


def test_the_gateway_config_takes_n_and_refuses_zero() -> None:
    """[gateway] metrics_tenants_top defaults to 20; 0 (no tenant at all, or unbounded by mistake) is refused."""
    assert GatewayConfig().metrics_tenants_top == 20
    assert GatewayConfig(metrics_tenants_top=5).metrics_tenants_top == 5
    with pytest.raises(ValidationError):
        GatewayConfig(metrics_tenants_top=0)
    with pytest.raises(ValueError, match="at least 1"):
        GatewayMetrics(tenants_top=0)


def test_the_gateway_scrape_names_the_top_tenants_and_sums_the_rest(make_gateway: GatewayFactory) -> None:
    """Through the gateway with metrics_tenants_top = 2: four tenants' calls give 2 labels plus other, summing to
    the usage log's total, and the top two are those that spent most."""
    gw = make_gateway(metrics_tenants_top=2)
    for tenant, n in (("acme", 4), ("globex", 3), ("initech", 1), ("umbrella", 2)):
        key = gw.new_key(tenant)
        for i in range(n):
            gw.client(key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}])
    costs: dict[str, int] = defaultdict(int)
    calls: dict[str, int] = defaultdict(int)
    for record in gw.engine.store.usage_records():
        costs[record.attribution.tenant] += record.cost_mc
        calls[record.attribution.tenant] += 1
    text = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {gw.new_key('ops', admin=True)}"},
                     timeout=20).text
    _check(text, dict(costs), dict(calls), 2)
