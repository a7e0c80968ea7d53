"""Tenants are walls (DESIGN.md rule 13), through the gateway over real HTTP with the official client.

A tenant's key naming another tenant's conversation or task id reaches a scope of its own:
it cannot spend the other's conversation budget, read its limit or spend in a refusal, or
use up its re-attempts. Only a registered shared group spans tenants, and only for members.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from gateway_kit import MODEL, GatewayFactory, Harness, stub_policy

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.scopes import Level, scope_key

_WORDS = ("amber", "basin", "coral", "delta", "ember", "fjord", "grove", "haven", "ivory", "jolly",
          "karma", "lemon", "mango", "nylon", "olive", "pearl")


def _messages(i: int) -> list[dict[str, str]]:
    """A request unlike every other (so the loop detectors never fire), all of one length (one ceiling)."""
    words = " ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(5))
    return [{"role": "user", "content": f"{i:03d}: describe {words} in one line."}]


def _ceiling_mc(gw: Harness, key: str) -> int:
    """The ceiling of one call of :func:`_messages` (read from the gateway's answer header)."""
    raw = gw.client(key).chat.completions.with_raw_response.create(model=MODEL, messages=_messages(0))
    return int(raw.headers["x-comptroller-ceiling-mc"])


def _settled(gw: Harness, scope: str) -> int:
    return sum(a.settled_mc + a.reserved_mc for a in gw.engine.store.accounts() if a.scope == scope)


def test_another_tenants_conversation_id_is_a_scope_of_ones_own(make_gateway: GatewayFactory) -> None:
    """A's key naming B's conversation spends A's own conversation budget; B's account is untouched,
    and A's refusal names only A's scope, never B's limit, spend or tenant."""
    gw = make_gateway(stub_policy())
    acme, globex = gw.new_key("acme"), gw.new_key("globex")
    ceiling = _ceiling_mc(gw, gw.new_key("initech"))
    gw.engine.store.put_budget(Budget(Level.CONVERSATION, ANY_SCOPE, ceiling))  # one call per conversation
    header = {"X-Comptroller-Conversation": "B-secret-conv"}
    gw.client(globex, **header).chat.completions.create(model=MODEL, messages=_messages(1))
    b_scope = scope_key("test", "globex", "B-secret-conv")
    b_spent = _settled(gw, b_scope)
    assert b_spent > 0
    with pytest.raises(openai.RateLimitError):
        gw.client(globex, **header).chat.completions.create(model=MODEL, messages=_messages(2))
    gw.client(acme, **header).chat.completions.create(model=MODEL, messages=_messages(3))  # the wall
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client(acme, **header).chat.completions.create(model=MODEL, messages=_messages(4))
    message = caught.value.message
    assert scope_key("test", "acme", "B-secret-conv") in message
    assert "globex" not in message and b_scope not in message
    assert _settled(gw, b_scope) == b_spent
    assert len(gw.stub.control.requests) == 3  # the probe, B's first, A's first


def test_another_tenants_task_re_attempts_are_not_used_up(make_gateway: GatewayFactory) -> None:
    """A's key naming B's task with many attempt ids exhausts only A's own re-attempts; B's first attempt
    is still admitted, and A's refusal names A's task scope only."""
    retries_max_per_day = 2
    gw = make_gateway(stub_policy(retries={"retries_max_per_day": retries_max_per_day}))
    acme, globex = gw.new_key("acme"), gw.new_key("globex")
    attempts = retries_max_per_day + 1  # the first attempt and the re-attempts
    for i in range(attempts):
        gw.client(acme, **{"X-Comptroller-Task": "B-nightly-report", "X-Comptroller-Attempt": f"a{i}"}
                  ).chat.completions.create(model=MODEL, messages=_messages(10 + i))
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client(acme, **{"X-Comptroller-Task": "B-nightly-report", "X-Comptroller-Attempt": "a-last"}
                  ).chat.completions.create(model=MODEL, messages=_messages(30))
    assert caught.value.code == "retry_limit"
    assert scope_key("test", "acme", "B-nightly-report") in caught.value.message
    assert "globex" not in caught.value.message
    gw.client(globex, **{"X-Comptroller-Task": "B-nightly-report", "X-Comptroller-Attempt": "b0"}
              ).chat.completions.create(model=MODEL, messages=_messages(40))
    assert len(gw.stub.control.requests) == attempts + 1


_MEMBERS = [
    {"agent": "alice", "role": "writer", "description": "backend", "tenant": "acme"},
    {"agent": "gus", "role": "writer", "description": "frontend", "tenant": "globex"},
    {"agent": "judy", "role": "judge", "description": "decides", "decides": True, "tenant": "acme"},
]


def test_a_shared_group_spans_its_member_tenants_only(make_gateway: GatewayFactory) -> None:
    """Members of two tenants draw on one group budget (rule 1); a third tenant naming the group's
    conversation is refused with a 403 that shows nothing of the group's budget."""
    budget_mc = 10**9
    gw = make_gateway(stub_policy(groups={"room": {"conversation": "room-1", "members": _MEMBERS}},
                                  budgets=[{"level": "conversation", "group": "room-1", "limit_mc": budget_mc}]))
    header = {"X-Comptroller-Conversation": "room-1"}
    gw.client(gw.new_key("acme", agent="alice"), **header).chat.completions.create(model=MODEL,
                                                                                 messages=_messages(50))
    gw.client(gw.new_key("globex", agent="gus"), **header).chat.completions.create(model=MODEL,
                                                                                 messages=_messages(51))
    shared = [a for a in gw.engine.store.accounts() if a.budget.level is Level.CONVERSATION]
    assert [a.scope for a in shared] == [scope_key("test", "room-1")]
    assert shared[0].settled_mc == sum(r.cost_mc for r in gw.engine.store.usage_records())
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gw.client(gw.new_key("initech"), **header).chat.completions.create(model=MODEL, messages=_messages(52))
    assert caught.value.code == "group_not_member"
    assert caught.value.param == "x-comptroller-conversation"
    assert "$" not in caught.value.message and str(budget_mc) not in caught.value.message
    assert len(gw.stub.control.requests) == 2


def test_admin_budget_endpoint_needs_every_id_and_tenants_read_their_conversations(
        make_gateway: GatewayFactory) -> None:
    """PUT /admin/budgets without the tenant a level needs is a 400 naming it (nothing stored); a tenant key
    lists its own conversation accounts, never another tenant's nor the shared group's."""
    gw = make_gateway(stub_policy(groups={"room": {"conversation": "room-1", "members": _MEMBERS}}))
    ops = gw.new_key("ops", admin=True)
    with httpx.Client(base_url=f"{gw.url}/admin", headers={"authorization": f"Bearer {ops}"}, timeout=20) as client:
        missing = client.put("/budgets", json={"level": "conversation", "conversation": "c-1", "limit_mc": 10**9})
        assert missing.status_code == 400 and "tenant" in missing.json()["error"]["message"]
        assert gw.engine.store.budgets() == []
        for body in ({"level": "conversation", "tenant": "acme", "conversation": "c-1", "limit_mc": 10**9},
                     {"level": "conversation", "tenant": "globex", "conversation": "c-1", "limit_mc": 10**9},
                     {"level": "conversation", "group": "room-1", "limit_mc": 10**9}):
            assert client.put("/budgets", json=body).status_code == 200
    acme = gw.new_key("acme", agent="alice")
    gw.client(acme, **{"X-Comptroller-Conversation": "c-1"}).chat.completions.create(model=MODEL,
                                                                                   messages=_messages(60))
    gw.client(gw.new_key("globex"), **{"X-Comptroller-Conversation": "c-1"}).chat.completions.create(
        model=MODEL, messages=_messages(61))
    gw.client(acme, **{"X-Comptroller-Conversation": "room-1"}).chat.completions.create(model=MODEL,
                                                                                      messages=_messages(62))
    with httpx.Client(base_url=f"{gw.url}/admin", headers={"authorization": f"Bearer {acme}"}, timeout=20) as client:
        scopes = {a["scope"] for a in client.get("/budgets").json()}
    assert scopes == {scope_key("test", "acme", "c-1")}
