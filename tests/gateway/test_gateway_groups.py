"""Group chats through the gateway over real HTTP: dispatch, the group budget on real calls, tenants, admin."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from gateway_kit import MODEL, GatewayFactory, Harness, stub_policy

CONVERSATION = "review-1"
GROUP_LIMIT_MC = 25_000  # a few calls: each ceiling is ~20,100 mc (whole-body input bound), each cost ~1,700 mc
MEMBERS = [
    {"agent": "alice", "role": "writer", "description": "python http api databases index queries", "tenant": "acme"},
    {"agent": "bob", "role": "writer", "description": "css frontend design colours", "tenant": "acme"},
    {"agent": "judy", "role": "judge", "description": "final decision on what ships", "decides": True,
     "tenant": "acme"},
]


def group_policy(**overrides: Any) -> Any:
    """The test policy with group ``review`` (conversation ``review-1``, k = 2) and its group budget."""
    groups = {"review": {"conversation": CONVERSATION, "k": 2, "members": MEMBERS}}
    budgets = [{"level": "conversation", "group": CONVERSATION, "limit_mc": GROUP_LIMIT_MC}]
    return stub_policy(groups=groups, budgets=budgets, **overrides)


@pytest.fixture
def ggw(make_gateway: GatewayFactory) -> Harness:
    """A gateway with the group policy."""
    return make_gateway(group_policy())


def post(gw: Harness, group: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    """POST /v1/groups/{group}/dispatch with ``key`` (default: the harness's acme key)."""
    return httpx.post(f"{gw.url}/v1/groups/{group}/dispatch", json=body, timeout=10,
                      headers={"authorization": f"Bearer {key or gw.key}"})


def admin(gw: Harness) -> httpx.Client:
    """An HTTP client on the admin API with a fresh admin key."""
    key = gw.new_key("ops", admin=True)
    return httpx.Client(base_url=f"{gw.url}/admin", headers={"authorization": f"Bearer {key}"})


def test_dispatch_names_the_eligible_agents_with_reasons(ggw: Harness) -> None:
    """A mention is dispatched first, a relevant member next (k = 2), and the judge is left out, with why."""
    message = {"id": "m1", "author": "carol", "text": "@bob the database index queries are slow",
               "at": "2026-11-21T17:00:00+00:00"}
    answer = post(ggw, "review", message)
    assert answer.status_code == 200
    decision = answer.json()
    assert [(r["agent"], r["reason"]) for r in decision["responders"]] == [("bob", "mentioned"), ("alice", "ranked")]
    assert [(x["agent"], x["reason"]) for x in decision["left_out"]] == [("judy", "not_relevant")]
    assert decision["mode"] == "full"
    assert decision["remaining"] == 1.0
    assert post(ggw, "review", message).json() == decision  # a retried post (same time) answers the first decision
    logged = ggw.engine.store.events("dispatch")
    assert [e.detail["message"] for e in logged] == ["m1"]
    assert logged[0].scope == f"test|{CONVERSATION}"


def test_group_budget_refuses_a_dispatched_agents_call_once_spent(ggw: Harness) -> None:
    """Calls of a dispatched agent carrying the group's conversation draw on the group budget until it refuses them;
    the same agent outside the conversation is not refused, and the next dispatch reads what is left."""
    decision = post(ggw, "review", {"id": "m1", "author": "carol", "text": "@alice please review the index"}).json()
    assert "alice" in [r["agent"] for r in decision["responders"]]
    alice = ggw.new_key(agent="alice")
    in_group = ggw.client(alice, **{"X-Comptroller-Conversation": CONVERSATION})
    admitted = 0
    with pytest.raises(openai.RateLimitError) as caught:
        for i in range(10):
            in_group.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Review part {i}."}])
            admitted += 1
    assert admitted >= 1
    assert caught.value.code == "budget_exceeded"
    assert caught.value.param == "conversation"
    records = list(ggw.engine.store.usage_records())
    assert len(records) == admitted
    assert all(r.attribution.conversation == CONVERSATION and r.attribution.agent == "alice" for r in records)
    spent = sum(r.cost_mc for r in records)
    assert spent <= GROUP_LIMIT_MC
    outside = [{"role": "user", "content": "Unrelated work."}]
    ggw.client(alice).chat.completions.create(model=MODEL, messages=outside)  # no conversation: no group budget
    later = post(ggw, "review", {"id": "m2", "author": "carol", "text": "@judy decide please"}).json()
    assert later["remaining"] == pytest.approx((GROUP_LIMIT_MC - spent) / GROUP_LIMIT_MC)
    assert ggw.pending() == 0


def test_tenant_keys_dispatch_only_in_their_tenants_groups(ggw: Harness) -> None:
    """Another tenant's key does not see the group; a key bound to an agent cannot post as another member."""
    body = {"id": "m1", "author": "carol", "text": "hello"}
    foreign = post(ggw, "review", body, ggw.new_key("globex"))
    assert foreign.status_code == 404
    assert foreign.json()["error"]["code"] == "group_not_found"
    as_bob = post(ggw, "review", {**body, "author": "bob"}, ggw.new_key(agent="alice"))
    assert as_bob.status_code == 403
    assert as_bob.json()["error"]["param"] == "author"
    assert post(ggw, "review", {**body, "author": "alice"}, ggw.new_key(agent="alice")).status_code == 200
    assert post(ggw, "review", {**body, "id": "m2"}, ggw.new_key("ops", admin=True)).status_code == 200
    assert post(ggw, "nope", body).status_code == 404
    assert post(ggw, "review", body, "ck-not.a-key").status_code == 401


def test_bad_messages_are_400_naming_the_problem(ggw: Harness) -> None:
    """Unknown mentions, a bad kind, a missing field, a reused id with other text: 400, nothing dispatched."""
    unknown = post(ggw, "review", {"id": "m1", "author": "carol", "text": "@mallory fix it"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "invalid_message"
    assert "mallory" in unknown.json()["error"]["message"]
    kind = post(ggw, "review", {"id": "m1", "author": "carol", "text": "x", "kind": "memo"})
    assert (kind.status_code, kind.json()["error"]["param"]) == (400, "kind")
    missing = post(ggw, "review", {"id": "m1", "text": "x"})
    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "author")
    assert post(ggw, "review", {"id": "m1", "author": "carol", "text": "first"}).status_code == 200
    reused = post(ggw, "review", {"id": "m1", "author": "carol", "text": "second"})
    assert reused.status_code == 400
    assert [e.detail["message"] for e in ggw.engine.store.events("dispatch")] == ["m1"]


def test_admin_puts_lists_and_removes_groups(ggw: Harness) -> None:
    """A group put through the admin API dispatches at once and is gone when removed; bad tables are 400."""
    table = {"conversation": "triage-1", "k": 1, "members": [
        {"agent": "ops-bot", "role": "triager", "description": "alerts outages pager", "tenant": "globex"},
        {"agent": "lead", "role": "judge", "description": "decides", "decides": True, "tenant": "globex"}]}
    globex = ggw.new_key("globex")
    with admin(ggw) as client:
        put = client.put("/groups/triage", json=table)
        assert put.status_code == 200
        assert put.json()["members"][0] == {"agent": "ops-bot", "role": "triager", "decides": False,
                                            "description": "alerts outages pager", "tenant": "globex"}
        assert put.json()["budget_remaining"] is None
        assert sorted(g["id"] for g in client.get("/groups").json()) == ["review", "triage"]
        review = client.get("/groups/review").json()
        assert (review["conversation"], review["k"], review["budget_remaining"]) == (CONVERSATION, 2, 1.0)
        bad = client.put("/groups/broken", json={"members": []})
        assert bad.status_code == 400
        assert "members" in bad.json()["error"]["message"]
        assert client.put("/groups/typo", json={"members": MEMBERS, "kk": 3}).status_code == 400
        assert "/groups/{group_id}" in client.get("/openapi.json").json()["paths"]
    dispatched = post(ggw, "triage", {"id": "t1", "author": "pagerduty", "text": "outages alerts firing"}, globex)
    assert [r["agent"] for r in dispatched.json()["responders"]] == ["ops-bot"]
    with httpx.Client(base_url=f"{ggw.url}/admin", headers={"authorization": f"Bearer {globex}"}) as tenant:
        assert [g["id"] for g in tenant.get("/groups").json()] == ["triage"]
        assert tenant.get("/groups/review").status_code == 404
        assert tenant.put("/groups/triage", json=table).status_code == 403
    with admin(ggw) as client:
        assert client.delete("/groups/triage").status_code == 204
        assert client.delete("/groups/triage").status_code == 404
    assert post(ggw, "triage", {"id": "t2", "author": "pagerduty", "text": "again"}, globex).status_code == 404
