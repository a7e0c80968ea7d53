"""The admin API's usage, report and P&L over a time range, per API key, with tenant walls, over real HTTP.

Expected figures are computed in the test from the ledger's own usage log (what the gateway
settled), never pasted; the range cuts are instants of that log.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from gateway_kit import MODEL, GatewayFactory, Harness, stub_policy
from loopback import LoopbackServer
from stub_upstream import StubUpstream

from comptroller.bootstrap import build_engine
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.reports.chargeback import COLUMNS
from comptroller.storage.keys import SQLiteKeyStore, new_key
from comptroller.storage.transfer_stores import transfers_from_url

MESSAGES = [{"role": "user", "content": "Hello there."}]
FEES = {"base_fee_usd": "0.00002", "margin": "0.5", "margin_floor": "0.4"}  # margin 1/3 < 0.4: flagged


def _client(gw: Harness, key: str) -> httpx.Client:
    return httpx.Client(base_url=f"{gw.url}/admin", headers={"authorization": f"Bearer {key}"}, timeout=20)


def _traffic(gw: Harness) -> tuple[str, str, str]:
    """acme calls with two keys (1 and 2 calls), globex with one (3 calls); returns the three plaintexts."""
    acme_1, acme_2, globex = gw.new_key("acme"), gw.new_key("acme"), gw.new_key("globex")
    for key, n in ((acme_1, 1), (acme_2, 2), (globex, 3)):
        for i in range(n):
            gw.client(key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}])
    return acme_1, acme_2, globex


def test_usage_by_key_gives_spend_per_key_and_a_tenant_key_sees_only_its_keys(make_gateway: GatewayFactory) -> None:
    """GET /usage?by=key: a row per API key id with its tenant and the sums of its calls; a tenant key gets its own."""
    gw = make_gateway()
    acme_key, _, _ = _traffic(gw)
    records = list(gw.engine.store.usage_records())
    expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        assert r.attribution.key_id is not None
        expected[(r.attribution.tenant, r.attribution.key_id)][0] += 1
        expected[(r.attribution.tenant, r.attribution.key_id)][1] += r.cost_mc
    with _client(gw, gw.new_key("ops", admin=True)) as admin:
        body = admin.get("/usage", params={"by": "key"}).json()
        assert body["group_by"] == "key"
        assert {(r["tenant"], r["key"]): [r["calls"], r["cost_mc"]] for r in body["rows"]} == expected
        assert sorted(calls for calls, _ in expected.values()) == [1, 2, 3]
    with _client(gw, acme_key) as acme:
        body = acme.get("/usage", params={"by": "key"}).json()
        assert {r["tenant"] for r in body["rows"]} == {"acme"}
        assert body["total_cost_mc"] == sum(c for (t, _), (_, c) in expected.items() if t == "acme")
        assert acme.get("/usage", params={"by": "key", "tenant": "globex"}).status_code == 403


def test_usage_from_is_inclusive_and_to_exclusive(make_gateway: GatewayFactory) -> None:
    """A cut at one call's settle instant puts that call in [cut, ...) and not in [..., cut); both add up."""
    gw = make_gateway()
    _traffic(gw)
    records = sorted(gw.engine.store.usage_records(), key=lambda r: r.resolved_at)
    cut = records[3].resolved_at
    with _client(gw, gw.new_key("ops", admin=True)) as admin:
        after = admin.get("/usage", params={"by": "tenant", "from": cut.isoformat()}).json()
        before = admin.get("/usage", params={"by": "tenant", "to": cut.isoformat()}).json()
        assert after["from"] == cut.isoformat() and after["to"] == ""
        assert after["total_cost_mc"] == sum(r.cost_mc for r in records if r.resolved_at >= cut)
        assert before["total_cost_mc"] == sum(r.cost_mc for r in records if r.resolved_at < cut)
        assert sum(r["calls"] for r in after["rows"]) + sum(r["calls"] for r in before["rows"]) == len(records)
        later = (records[-1].resolved_at + timedelta(seconds=1)).isoformat()
        assert admin.get("/usage", params={"from": later}).json()["rows"] == []
        report = admin.get("/report", params={"from": cut.isoformat()}).json()
        assert report["cost_mc"] == after["total_cost_mc"]
        assert report["time_range"]["from"] == cut.isoformat()
        empty = admin.get("/usage", params={"from": later, "to": later})
        assert empty.status_code == 400 and empty.json()["error"]["param"] == "to"
        bad = admin.get("/usage", params={"from": "last tuesday"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "from"


@pytest.fixture
def wallet_gateway(stub: StubUpstream, tmp_path: Path) -> Iterator[Harness]:
    """A gateway as `serve` builds it with a [fees] policy: the admin API gets the transfer store and margin floor."""
    stub.control.reset()
    db, policy = tmp_path / "ledger.db", stub_policy(fees=FEES)
    engine = build_engine(db_url=f"sqlite:///{db}", policy=policy)
    keys, transfers = SQLiteKeyStore(db), transfers_from_url(f"sqlite:///{db}")
    config = GatewayConfig(providers={"stub": ProviderConfig(base_url=stub.base_url)}, models={MODEL: "stub"},
                           admin_key_env=None)
    fees = policy.fees.schedule() if policy.fees else None
    app = create_app(engine=engine, keys=keys, config=config, namespace=policy.namespace, transfers=transfers,
                     margin_floor=None if fees is None else fees.margin_floor)
    record, plaintext = new_key(tenant="acme")
    keys.add(record)
    with LoopbackServer(app, grace_s=5.0) as server:
        yield Harness(url=server.url, engine=engine, keys=keys, stub=stub, key=plaintext, server=server)
    transfers.close()


def test_pnl_in_the_admin_api_uses_the_fee_schedule_and_keeps_tenant_walls(wallet_gateway: Harness) -> None:
    """GET /pnl?by=tenant: revenue = the fees of the calls, LLM cost = their cost; a tenant key gets its own row."""
    gw = wallet_gateway
    acme_key, _, _ = _traffic(gw)
    records = list(gw.engine.store.usage_records())
    base_mc, margin = 2, Decimal(FEES["margin"])  # $0.00002 = 2 mc
    fee = {r.reservation_id: max(base_mc, math.ceil(r.cost_mc * (1 + margin))) for r in records}
    with _client(gw, gw.new_key("ops", admin=True)) as admin:
        body = admin.get("/pnl", params={"by": "tenant", "period": "total"}).json()
        assert body["total"]["llm_cost_mc"] == sum(r.cost_mc for r in records)
        assert body["total"]["revenue_mc"] == sum(fee.values())
        rows = {r["scope"]: r for r in body["rows"]}
        assert set(rows) == {"test|acme", "test|globex"}
        assert rows["test|acme"]["revenue_mc"] == sum(fee[r.reservation_id] for r in records
                                                      if r.attribution.tenant == "acme")
        later = (max(r.resolved_at for r in records) + timedelta(seconds=1)).isoformat()
        assert admin.get("/pnl", params={"by": "tenant", "from": later}).json()["rows"] == []
        flagged = {r["scope"] for r in admin.get("/pnl", params={"by": "agent", "period": "total"}).json()["rows"]
                   if r["flagged"]}
        margins = defaultdict(lambda: [0, 0])
        for r in records:
            margins[f"test|{r.attribution.tenant}|{r.attribution.agent}"][0] += fee[r.reservation_id]
            margins[f"test|{r.attribution.tenant}|{r.attribution.agent}"][1] += r.cost_mc
        assert flagged == {s for s, (rev, cost) in margins.items() if rev - cost < Decimal(FEES["margin_floor"]) * rev}
        assert flagged  # the stub's calls cost far above the base fee: every agent's margin is 1/3
    with _client(gw, acme_key) as acme:
        own = acme.get("/pnl", params={"by": "agent", "period": "total"}).json()
        assert own["rows"] and all(r["scope"].startswith("test|acme|") for r in own["rows"])


def test_pnl_without_a_wallet_store_says_how_to_get_one(gw: Harness) -> None:
    """An admin API built without the transfer store answers GET /pnl with 404 naming `comptroller pnl`."""
    with _client(gw, gw.new_key("ops", admin=True)) as admin:
        answer = admin.get("/pnl")
    assert answer.status_code == 404
    assert "comptroller pnl" in answer.json()["error"]["message"]


def test_usage_csv_has_the_report_columns_and_keeps_tenant_walls(make_gateway: GatewayFactory) -> None:
    """GET /usage.csv?by=key: the CSV `comptroller report --by key --csv` writes; a tenant key's holds its rows only."""
    gw = make_gateway()
    acme_key, _, _ = _traffic(gw)
    records = list(gw.engine.store.usage_records())
    with _client(gw, gw.new_key("ops", admin=True)) as admin:
        answer = admin.get("/usage.csv", params={"by": "key"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(answer.text))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    rows = list(reader)
    assert sum(int(r["cost_mc"]) for r in rows) == sum(r.cost_mc for r in records)
    assert {r["group"] for r in rows} == {r.attribution.key_id for r in records}
    with _client(gw, acme_key) as acme:
        own = list(csv.DictReader(io.StringIO(acme.get("/usage.csv", params={"by": "tenant"}).text)))
        assert [(r["tenant"], int(r["cost_mc"])) for r in own] == [
            ("acme", sum(r.cost_mc for r in records if r.attribution.tenant == "acme"))]
        assert acme.get("/usage.csv", params={"tenant": "globex"}).status_code == 403
