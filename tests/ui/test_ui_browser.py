"""The UI in Debian's Chromium (Playwright), on a gateway serving the replayed ChatDev ledger.

Every test's page fixture fails on a console error or a request off the gateway. Set
``COMPTROLLER_UI_SCREENSHOTS=DIR`` to keep the screenshots of each page (docs/img is made so).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from ui_kit import HOT_AGENT, UiGateway

from comptroller.domain.budgets import Budget, Period
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import Level
from comptroller.reports.routing import build_routing_report, routed_from_events

PAGES = {"overview": "/ui/?tenant=chatdev&group_by=agent&start={first}&end={last}", "overview-today": "/ui/",
         "budgets": "/ui/budgets", "defenses": "/ui/defenses", "requests": "/ui/requests",
         "routing": "/ui/routing", "cache": "/ui/cache", "actions": "/ui/actions"}


def login(page: Any, gateway: UiGateway, key: str) -> None:
    """Log in through the form."""
    page.goto(f"{gateway.url}/ui/login")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{gateway.url}/ui/")


def shoot(page: Any, name: str, tmp_path: Path) -> Path:
    """A full-page screenshot in ``tmp_path`` (and in ``$COMPTROLLER_UI_SCREENSHOTS`` when set)."""
    target = Path(os.environ.get("COMPTROLLER_UI_SCREENSHOTS") or tmp_path) / f"ui-{name}.png"
    page.screenshot(path=str(target), full_page=False)
    return target


def test_every_page_loads_clean(page: Any, gateway: UiGateway, tmp_path: Path) -> None:
    """Each page answers 200 and renders with no console error and no request off the gateway (fixture)."""
    gateway.stub.control.cached_tokens = 3
    gateway.call()
    gateway.call(agent=HOT_AGENT)  # opens its breaker: the Defenses page shows the trip in its history
    gateway.stub.control.cached_tokens = 0
    for cheap in (False, True, False):
        gateway.ask_cascade(cheap_answers=cheap)
    gateway.engine.store.put_budget(_acme_budget(gateway, 1))
    with pytest.raises(openai.APIStatusError):
        gateway.call()  # refused by the tenant budget: the Defenses and Requests pages show why
    days = [r.resolved_at.date() for r in gateway.engine.store.usage_records() if r.attribution.tenant == "chatdev"]
    login(page, gateway, gateway.admin_key)
    for name, path in PAGES.items():
        answer = page.goto(gateway.url + path.format(first=min(days), last=max(days)))
        assert answer is not None and answer.status == 200, path
        page.wait_for_load_state("networkidle")
        assert shoot(page, name, tmp_path).stat().st_size > 10_000
    page.goto(f"{gateway.url}/ui/?tenant=chatdev")
    page.wait_for_selector("#spend-chart canvas")  # uPlot drew the chart
    page.goto(f"{gateway.url}/ui/requests")
    with page.expect_response(lambda r: "/ui/requests/rows" in r.url):
        page.fill("input[name=outcome]", "budget")  # htmx reloads the table as one types
    rows = page.locator("#request-rows tr")
    assert rows.count() >= 1
    assert all("budget" in text for text in rows.all_inner_texts())


def _acme_budget(gateway: UiGateway, limit_mc: int) -> Budget:
    """A daily budget on tenant acme."""
    return Budget(level=Level.TENANT, scope="replay|acme", limit_mc=limit_mc, period=Period.DAY)


def test_figures_equal_the_ledger(page: Any, gateway: UiGateway) -> None:
    """For tenant chatdev, its costliest agent and that agent's costliest day, the page shows the ledger's sums;
    over the whole range the per-agent costs and P50/P95 per task equal the admin report's JSON."""
    records = [r for r in gateway.engine.store.usage_records() if r.attribution.tenant == "chatdev"]
    by_agent: dict[str, int] = defaultdict(int)
    for r in records:
        by_agent[r.attribution.agent] += r.cost_mc
    agent = max(by_agent, key=lambda a: by_agent[a])
    by_day: dict[date, int] = defaultdict(int)
    for r in records:
        if r.attribution.agent == agent:
            by_day[r.resolved_at.date()] += r.cost_mc
    day = max(by_day, key=lambda d: by_day[d])
    login(page, gateway, gateway.admin_key)
    page.goto(f"{gateway.url}/ui/?tenant=chatdev&agent={agent}&start={day}&end={day}&group_by=agent")
    cell = page.locator(f'table[data-testid=groups] tr[data-key="{agent}"] td[data-mc]')
    assert int(cell.get_attribute("data-mc")) == by_day[day]
    assert cell.inner_text() == format_usd(by_day[day])
    assert page.inner_text("[data-testid=total]") == format_usd(by_day[day])
    chart = json.loads(page.inner_text("#spend-data"))
    assert sum(sum(v) for v in chart["values"]) == by_day[day]

    report = httpx.get(f"{gateway.url}/admin/report", headers={"Authorization": f"Bearer {gateway.admin_key}"},
                       timeout=20).json()
    first, last = min(r.resolved_at.date() for r in records), max(r.resolved_at.date() for r in records)
    page.goto(f"{gateway.url}/ui/?tenant=chatdev&start={first}&end={last}&group_by=agent")
    for group in report["by_agent"]:
        shown = page.locator(f'table[data-testid=groups] tr[data-key="{group["key"]}"] td[data-mc]')
        assert int(shown.get_attribute("data-mc")) == group["cost_mc"], group["key"]
    assert page.inner_text("[data-testid=p50]") == format_usd(report["p50_run_cost_mc"])
    assert page.inner_text("[data-testid=p95]") == format_usd(report["p95_run_cost_mc"])


def test_kill_switch_trips_and_resets_from_the_ui(page: Any, gateway: UiGateway) -> None:
    """Tripping the namespace's kill switch (after the confirmation) refuses the next gateway call; resetting
    it admits calls again."""
    gateway.call()
    login(page, gateway, gateway.admin_key)
    page.goto(f"{gateway.url}/ui/defenses")
    form = page.locator("[data-testid=kill-form]")
    form.locator("select[name=level]").select_option("namespace")
    form.locator("input[name=scope]").fill("replay")
    form.locator("input[name=reason]").fill("runaway spend, paged on-call")
    form.locator("[data-testid=kill]").click()
    assert "Trip the kill switch on namespace 'replay'" in page.inner_text("[data-testid=confirm-what]")
    gateway.call()  # nothing tripped before the confirmation
    page.click("[data-testid=confirm]")
    page.wait_for_url(f"{gateway.url}/ui/defenses")
    assert "tripped" in page.inner_text("table[data-testid=switches]")
    with pytest.raises(openai.APIStatusError) as refused:
        gateway.call()
    assert refused.value.body["code"] == "kill_switch", refused.value.body
    page.click("[data-testid=unkill]")
    page.click("[data-testid=confirm]")
    page.wait_for_url(f"{gateway.url}/ui/defenses")
    assert "reset" in page.inner_text("table[data-testid=switches]")
    gateway.call()


def test_tenant_key_cannot_see_another_tenant(page: Any, gateway: UiGateway) -> None:
    """Logged in with acme's key, naming tenant chatdev in a URL is a 403 page, and acme's pages show acme only."""
    gateway.call()
    login(page, gateway, gateway.acme_key)
    for path in ("/ui/?tenant=chatdev", "/ui/requests?tenant=chatdev"):
        answer = page.goto(f"{gateway.url}{path}")
        assert answer is not None and answer.status == 403, path
        assert "cannot see tenant 'chatdev'" in page.inner_text("[data-testid=error]")
    forbidden = "Failed to load resource: the server responded with a status of 403 (Forbidden)"
    assert page.watch.errors == [forbidden, forbidden]  # Chromium logs each 403 it was shown; nothing else
    page.watch.errors.clear()
    page.goto(f"{gateway.url}/ui/requests")
    tenants = {row.split("\t")[1] for row in page.locator("#request-rows tr").all_inner_texts()}
    assert tenants == {"acme"}
    page.goto(f"{gateway.url}/ui/")
    acme_mc = sum(r.cost_mc for r in gateway.engine.store.usage_records() if r.attribution.tenant == "acme")
    assert page.inner_text("[data-testid=total]") == format_usd(acme_mc)
    assert page.locator("select[name=tenant]").count() == 0  # no tenant picker for a tenant key


def test_budget_edited_in_the_ui_refuses_the_next_call(page: Any, gateway: UiGateway) -> None:
    """A tenant budget set in the UI below one call's ceiling refuses acme's next call, naming the tenant level."""
    gateway.call()
    login(page, gateway, gateway.admin_key)
    page.goto(f"{gateway.url}/ui/budgets")
    form = page.locator("[data-testid=budget-form]")
    form.locator("select[name=level]").select_option("tenant")
    form.locator("input[name=tenant]").fill("acme")
    form.locator("input[name=limit_usd]").fill("0.01")  # 1,000 mc; a call's ceiling here is above 3,200 mc
    form.locator("select[name=period]").select_option("day")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/ui/budgets?saved=*")
    assert [b.limit_mc for b in gateway.engine.store.budgets() if b.scope == "replay|acme"] == [1000]
    with pytest.raises(openai.APIStatusError) as refused:
        gateway.call()
    error = refused.value.body
    assert refused.value.status_code == 429 and "tenant" in json.dumps(error), error
    page.goto(f"{gateway.url}/ui/defenses")
    assert "replay|acme" in page.inner_text("table[data-testid=refusals]")


def test_routing_page_shows_the_ledgers_escalation(page: Any, gateway: UiGateway) -> None:
    """Three cascade requests, two escalated: the page shows each tier's escalation rate from the route events
    and the warning (two of three reached the top tier, over 30 %)."""
    for cheap in (False, True, False):
        gateway.ask_cascade(cheap_answers=cheap)
    (expected,) = build_routing_report(routed_from_events(gateway.engine.store.events("route")))
    login(page, gateway, gateway.admin_key)
    page.goto(f"{gateway.url}/ui/routing")
    text = page.inner_text("main")
    for tier in expected.tiers:
        assert f"{tier.escalation_rate:.1%}" in text
    assert expected.warning is not None
    assert page.inner_text("[data-testid=routing-warning]") == expected.warning
