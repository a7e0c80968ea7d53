"""``GET /admin/budgets/idle``: a budget whose scope matches no traffic is visible over the admin API.

Such a budget has no account, so ``GET /budgets`` cannot show it (DESIGN.md rule 14: a limit
never silently idles).
"""

from __future__ import annotations

import httpx
from gateway_kit import MODEL, GatewayFactory, Harness, stub_policy


def _as_key(gw: Harness, key: str) -> httpx.Client:
    return httpx.Client(base_url=f"{gw.url}/admin", headers={"authorization": f"Bearer {key}"})


def test_idle_budgets_are_listed_until_a_call_matches_them(make_gateway: GatewayFactory) -> None:
    """A typo'd agent budget stays idle while calls flow; the matched one leaves the list; tenants see their own."""
    policy = stub_policy(budgets=[{"level": "agent", "tenant": "acme", "agent": "writer", "limit_mc": 10**9},
                                  {"level": "agent", "tenant": "acme", "agent": "wirter", "limit_mc": 10**9},
                                  {"level": "tenant", "tenant": "globex", "limit_mc": 10**9}])
    gw = make_gateway(policy)
    acme_writer = gw.new_key("acme", agent="writer")
    with _as_key(gw, gw.new_key("ops", admin=True)) as admin:
        before = admin.get("/budgets/idle")
        assert before.status_code == 200
        assert {(b["level"], b["scope"], b["last_period_key"]) for b in before.json()} == {
            ("agent", "test|acme|writer", None), ("agent", "test|acme|wirter", None), ("tenant", "test|globex", None)}
        gw.client(acme_writer).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        after = admin.get("/budgets/idle").json()
        assert {b["scope"] for b in after} == {"test|acme|wirter", "test|globex"}
        assert all("matched no call" in b["message"] for b in after)
        assert {a["scope"] for a in admin.get("/budgets").json()} == {"test|acme|writer"}
    with _as_key(gw, gw.new_key("acme")) as tenant:
        assert {b["scope"] for b in tenant.get("/budgets/idle").json()} == {"test|acme|wirter"}
