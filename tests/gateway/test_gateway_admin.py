"""The admin API, metrics and health over real HTTP: admin rights, tenant isolation, kill switch, keys."""

from __future__ import annotations

import httpx
import openai
import pytest
from gateway_kit import MODEL, GatewayFactory, Harness, stub_policy, wait_for

MESSAGES = [{"role": "user", "content": "Hello there."}]


def admin(gw: Harness) -> httpx.Client:
    """An HTTP client with a fresh admin key."""
    return as_key(gw, gw.new_key("ops", admin=True))


def as_key(gw: Harness, key: str) -> httpx.Client:
    """An HTTP client on the admin API with ``key``."""
    return httpx.Client(base_url=f"{gw.url}/admin", headers={"authorization": f"Bearer {key}"})


def test_tenant_key_reads_only_its_own_tenant(make_gateway: GatewayFactory) -> None:
    """A tenant's key sees its own usage and budgets, never another tenant's, and cannot write."""
    policy = stub_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 10**9},
                                  {"level": "tenant", "tenant": "globex", "limit_mc": 10**9}])
    gw = make_gateway(policy)
    acme, globex = gw.new_key("acme"), gw.new_key("globex")
    gw.client(acme).chat.completions.create(model=MODEL, messages=MESSAGES)
    gw.client(globex).chat.completions.create(model=MODEL, messages=MESSAGES)
    gw.client(globex).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}])
    with as_key(gw, acme) as client:
        usage = client.get("/usage", params={"group_by": "tenant"}).json()
        assert [(r["key"], r["calls"]) for r in usage["rows"]] == [("acme", 1)]
        denied = client.get("/usage", params={"tenant": "globex"})
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "admin_only"
        scopes = {a["scope"] for a in client.get("/budgets").json()}
        assert scopes == {"test|acme"}
        assert client.put("/budgets", json={"level": "tenant", "tenant": "acme", "limit_mc": 10**12}).status_code == 403
        assert {k["tenant"] for k in client.get("/keys").json()} == {"acme"}
        assert client.get("/report").status_code == 403
    with admin(gw) as client:
        usage = client.get("/usage", params={"group_by": "tenant"}).json()
        assert [(r["key"], r["calls"]) for r in usage["rows"]] == [("acme", 1), ("globex", 2)]
        assert usage["total_cost_mc"] == sum(r.cost_mc for r in gw.engine.store.usage_records())


def test_admin_creates_and_revokes_keys(gw: Harness) -> None:
    """A key made through the admin API works at once and stops working when revoked; no secret is listed."""
    with admin(gw) as client:
        created = client.post("/keys", json={"tenant": "initech", "agent": "bot"})
        assert created.status_code == 201
        key = created.json()["key"]
        gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES)
        assert list(gw.engine.store.usage_records())[-1].attribution.agent == "bot"
        assert all(k["key"] is None for k in client.get("/keys").json())
        assert client.delete(f"/keys/{created.json()['id']}").json()["revoked_at"] is not None
        assert client.delete("/keys/000000000000").status_code == 404
    with pytest.raises(openai.AuthenticationError):
        gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES)


def test_admin_sets_budgets_that_the_gateway_enforces(gw: Harness) -> None:
    """A budget put through the admin API refuses the next call over it."""
    with admin(gw) as client:
        put = client.put("/budgets", json={"level": "tenant", "tenant": "acme", "limit_mc": 5, "period": "total"})
        assert put.status_code == 200
        with pytest.raises(openai.RateLimitError) as caught:
            gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
        assert caught.value.param == "tenant"
        assert client.delete(f"/budgets/{put.json()['id']}").status_code == 204
    gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)


def test_kill_switch_refuses_with_503_until_reset(gw: Harness) -> None:
    """Tripping the namespace's kill switch answers 503 kill_switch; resetting it lets calls through."""
    with admin(gw) as client:
        tripped = client.post("/kill-switches/trip", json={"level": "namespace", "scope": "test", "reason": "drill"})
        assert tripped.status_code == 200
        with pytest.raises(openai.InternalServerError) as caught:
            gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
        assert (caught.value.status_code, caught.value.code) == (503, "kill_switch")
        assert gw.stub.control.requests == []
        assert client.post("/kill-switches/reset", json={"level": "namespace", "scope": "test"}).status_code == 200
    gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(gw.stub.control.requests) == 1


def test_admin_api_needs_a_key(gw: Harness) -> None:
    """Without a key the admin API answers 401 in the OpenAI error shape."""
    response = httpx.get(f"{gw.url}/admin/budgets")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{gw.url}/admin/openapi.json").json()["info"]["title"] == "comptroller admin API"


def test_metrics_and_health(gw: Harness) -> None:
    """/metrics counts requests, cost and refusals; /healthz answers while the ledger does."""
    gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        gw.client("ck-000000000000.wrongwrongwrongwrongwrong").chat.completions.create(model=MODEL, messages=MESSAGES)
    assert httpx.get(f"{gw.url}/metrics").status_code == 401  # closed: names tenants and agents
    metrics_key = gw.new_key("ops", admin=True)
    text = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {metrics_key}"}).text
    cost = next(r.cost_mc for r in gw.engine.store.usage_records())
    assert 'comptroller_requests_total{endpoint="chat",status="200"} 1.0' in text
    assert 'comptroller_requests_total{endpoint="chat",status="401"} 1.0' in text
    assert f'comptroller_cost_mc_total{{model="{MODEL}"}} {float(cost)}' in text
    assert "comptroller_gateway_overhead_seconds_count 1.0" in text
    assert httpx.get(f"{gw.url}/healthz").json()["status"] == "ok"
    gw.engine.store.close()
    wait_for(lambda: httpx.get(f"{gw.url}/healthz").status_code == 503, "the ledger probe to see the closed ledger")


def test_loop_locks_are_listed_readably_and_reset_through_the_admin_api(gw: Harness) -> None:
    """A loop the default policy locks shows in GET /loops as an open lock with its request family (not the
    store's row encoding); POST /loops/reset closes it and clears the history, and the next call is served."""
    calls = 0
    with pytest.raises(openai.RateLimitError) as caught:
        while calls < 200:
            gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
            calls += 1
    assert caught.value.code == "loop_detected"
    with admin(gw) as client:
        (loop,) = client.get("/loops").json()
        assert (loop["status"], loop["lock"]["detector"], loop["lock"]["trips"]) == ("open", "same_request", 1)
        (family,) = loop["families"]
        assert family["count"] == calls
        assert family["reserved_mc"] > 0 and family["first_at"] <= family["last_at"]
        assert family["agent"] == loop["lock"]["agent"] and family["fingerprint"] == loop["lock"]["fingerprint"]
        reset = client.post("/loops/reset", json={"level": loop["level"], "scope": loop["scope"]})
        assert reset.status_code == 200
        assert (reset.json()["status"], reset.json()["families"]) == ("closed", [])
        unknown = client.post("/loops/reset", json={"level": "conversation", "scope": "no|such"})
        assert (unknown.status_code, unknown.json()["error"]["param"]) == (404, "scope")
    gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
