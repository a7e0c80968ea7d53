"""The Cache, Defenses (breaker history, refusal feed), Actions & tasks pages and spend by key, in Chromium.

Each page is checked against the ledger for one tenant (acme), one agent and today: figures are
derived from the usage log, the events and the stub model's rates, never pasted. The page fixture
fails a test on a console error or a request off the gateway.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from test_ui_browser import login, shoot
from ui_kit import HOT_AGENT, UiGateway

from comptroller.actions_config import TaskSettings, parse_actions
from comptroller.domain.actions import Action
from comptroller.domain.money import format_usd
from comptroller.domain.tasks.model import TaskStatus
from comptroller.engine.actions import ActionService
from comptroller.engine.tasks import TaskService

INPUT_MC, READ_MC = 100, 10  # the stub model's input and cache-read rates per token (ui_kit.STUB_PRICE)
WAIT_S = 20.0  # the longest any test waits for the live feed (it polls every 5 s)


def _acme_today(gateway: UiGateway) -> list[Any]:
    today = datetime.now(UTC).date()
    return [r for r in gateway.engine.store.usage_records()
            if r.attribution.tenant == "acme" and r.resolved_at.date() == today]


def test_cache_page_shows_hit_rate_and_savings_of_the_ledger(page: Any, gateway: UiGateway, tmp_path: Path) -> None:
    """Acme's calls with 3 cached prompt tokens each: the page's hit rate is the ledger's reads / input, and
    the money saved is 90 mc per read token (input 100 mc - read 10 mc), by model, by agent and in total."""
    gateway.stub.control.cached_tokens = 3
    for conversation in ("c1", "c2"):
        gateway.call(conversation=conversation)
    gateway.stub.control.cached_tokens = 0
    gateway.call(agent="writer")  # no cache reads: counted in the hit rate's denominator only
    records = _acme_today(gateway)
    reads = sum(r.usage.cache_read_tokens for r in records)
    inputs = sum(r.usage.input_tokens for r in records)
    assert reads == 6 and inputs > reads
    day = datetime.now(UTC).date()
    login(page, gateway, gateway.acme_key)
    page.goto(f"{gateway.url}/ui/cache?start={day}&end={day}")
    assert page.inner_text("[data-testid=hit-rate]") == f"{reads / inputs:.1%}"
    assert int(page.get_attribute("[data-testid=saved]", "data-mc")) == reads * (INPUT_MC - READ_MC)
    assert page.inner_text("[data-testid=saved]") == format_usd(reads * (INPUT_MC - READ_MC))
    model_row = page.locator('table[data-testid=cache-by-model] tr[data-key="stub-model"]')
    assert int(model_row.locator("td[data-read]").get_attribute("data-read")) == reads
    assert int(model_row.locator("td[data-saved-mc]").get_attribute("data-saved-mc")) == 540
    default = page.locator('table[data-testid=cache-by-agent] tr[data-key="default"]')
    default_input = sum(r.usage.input_tokens for r in records if r.attribution.agent == "default")
    assert int(default.locator("td[data-input]").get_attribute("data-input")) == default_input
    assert default.locator("td[data-rate]").inner_text() == f"{reads / default_input:.1%}"
    writer = page.locator('table[data-testid=cache-by-agent] tr[data-key="writer"]')
    assert int(writer.locator("td[data-saved-mc]").get_attribute("data-saved-mc")) == 0
    shoot(page, "cache", tmp_path)
    page.goto(f"{gateway.url}/ui/cache?tenant=chatdev")
    assert "cannot see tenant 'chatdev'" in page.inner_text("[data-testid=error]")
    page.watch.errors.clear()  # Chromium logs the 403 it was shown


def test_spend_by_key_on_the_overview_and_the_requests_page(page: Any, gateway: UiGateway) -> None:
    """Calls with two acme keys: the overview grouped by key shows each key's settled spend of today (and the
    key's name), and the requests page shows the key of each call and filters by it."""
    second = gateway.add_key("acme", name="batch jobs")
    gateway.call()
    gateway.call(key=second)
    gateway.call(key=second, conversation="c2")
    by_key: dict[str, int] = defaultdict(int)
    for r in _acme_today(gateway):
        by_key[r.attribution.key_id or "-"] += r.cost_mc
    assert len(by_key) == 2 and "-" not in by_key
    day = datetime.now(UTC).date()
    login(page, gateway, gateway.admin_key)
    page.goto(f"{gateway.url}/ui/?tenant=acme&start={day}&end={day}&group_by=key")
    for key_id, cost in by_key.items():
        cell = page.locator(f'table[data-testid=groups] tr[data-key="{key_id}"] td[data-mc]')
        assert int(cell.get_attribute("data-mc")) == cost
    named = second.removeprefix("ck-").split(".")[0]  # a key is ck-<id>.<secret>
    assert "batch jobs" in page.inner_text(f'table[data-testid=groups] tr[data-key="{named}"]')
    chosen = max(by_key, key=lambda k: by_key[k])
    page.goto(f"{gateway.url}/ui/?tenant=acme&key={chosen}&start={day}&end={day}&group_by=agent")
    assert page.inner_text("[data-testid=total]") == format_usd(by_key[chosen])
    page.goto(f"{gateway.url}/ui/requests?tenant=acme")
    with page.expect_response(lambda r: "/ui/requests/rows" in r.url):
        page.fill("input[name=key]", chosen)
    shown = page.locator("#request-rows td[data-key]").evaluate_all("cells => cells.map(c => c.dataset.key)")
    assert shown == [chosen] * 2


def test_breaker_history_and_live_refusal_feed(page: Any, gateway: UiGateway) -> None:
    """Acme's hot agent opens its breaker on its first call; the history shows the ledger's transitions, the
    live feed picks up a refusal made after the page loaded (htmx polling, bounded wait) with its full reason,
    and filters by code; chatdev's key sees none of it."""
    gateway.call(agent=HOT_AGENT)  # spends over the 1 mc threshold: the breaker opens
    with pytest.raises(openai.APIStatusError) as first:
        gateway.call(agent=HOT_AGENT)
    assert first.value.body["code"] == "circuit_open", first.value.body
    history = [e for e in gateway.engine.store.events("breaker") if "acme" in (e.scope or "")]
    assert [e.code for e in history] == ["opened"]
    login(page, gateway, gateway.admin_key)
    page.goto(f"{gateway.url}/ui/defenses")
    rows = page.locator('table[data-testid=breaker-history] tr[data-code]')
    assert rows.count() == len(gateway.engine.store.events("breaker"))
    assert "replay|acme|hot" in page.inner_text("table[data-testid=breaker-history]")

    before = len(gateway.engine.store.events("refusal"))
    time.sleep(1.1)  # past the 1 s cooldown: the next call is the half-open probe (it spends over 1 mc again)
    gateway.call(agent=HOT_AGENT)
    with pytest.raises(openai.APIStatusError) as second:
        gateway.call(agent=HOT_AGENT)
    (newest,) = gateway.engine.store.events("refusal")[before:]
    reason = str(newest.detail["message"])
    assert second.value.body["code"] == newest.code == "circuit_open"
    page.wait_for_function("text => document.querySelector('#refusal-feed').innerText.includes(text)", arg=reason,
                           timeout=WAIT_S * 1000)
    codes = [e.code for e in gateway.engine.store.events("breaker") if "acme" in (e.scope or "")]
    assert codes[:2] == ["opened", "half_opened"] and codes[2] in ("reopened", "closed")
    page.reload()
    for code in codes:
        assert page.locator(f'table[data-testid=breaker-history] tr[data-code="{code}"]').count() >= 1
    expected = sum(1 for e in gateway.engine.store.events("refusal") if e.code == "circuit_open")
    count = page.locator('table[data-testid=refusal-counts] tr[data-code="circuit_open"] td.n')
    assert int(count.inner_text()) == expected
    with page.expect_response(lambda r: "/ui/defenses/feed" in r.url and "code=circuit_open" in r.url):
        page.select_option("[data-testid=feed-code]", "circuit_open")
    page.wait_for_function("() => [...document.querySelectorAll('#refusal-feed table[data-testid=refusals] code')]"
                           ".every(c => c.innerText === 'circuit_open')", timeout=WAIT_S * 1000)
    assert reason in page.inner_text("#refusal-feed")

    page.click("text=log out")
    login(page, gateway, gateway.chatdev_key)
    page.goto(f"{gateway.url}/ui/defenses")
    assert "acme" not in page.inner_text("main")


def test_actions_and_tasks_page_shows_states_reasons_and_spend(page: Any, gateway: UiGateway,
                                                               tmp_path: Path) -> None:
    """Actions checked through the engine's action service show their states and reasons; a task shows its
    state, assignee and the spend the task service reads from the usage log; acme's key sees no chatdev row."""
    store, clock = gateway.engine.store, gateway.engine.clock
    rules = parse_actions({"blog": {"count_max": 1, "window_s": 86400, "trust_outcome": True},
                           "forum": {"approval": True}})
    actions = ActionService(store, clock, rules)
    for i, (tenant, platform, text) in enumerate([("acme", "blog", "first post"), ("acme", "blog", "second post"),
                                                  ("acme", "forum", "hello"), ("acme", "nowhere", "hi"),
                                                  ("chatdev", "blog", "theirs")]):
        actions.check(Action(id=f"a{i}", tenant=tenant, agent="writer", platform=platform, kind="post", text=text,
                             task="t1"))
    actions.record_outcome("acme", "a0", published=True, url="https://blog.example/1")
    actions.verify("acme", "a0")
    tasks = TaskService(store, clock, actions, TaskSettings(chain={"lead": ["writer"]}))
    tasks.create("acme", "t1", "Write the launch post", by="lead", status=TaskStatus.TODO)
    tasks.assign("acme", "t1", "writer", by="lead")
    tasks.move("acme", "t1", TaskStatus.IN_PROGRESS, by="writer")
    gateway.call(conversation="t1")  # attributed to task-t1, not t1
    gateway.client().chat.completions.create(
        model="stub-model", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
        extra_headers={"X-Comptroller-Task": "t1"})
    calls, spent = tasks.spend("acme", "t1")
    assert calls == 1 and spent > 0

    login(page, gateway, gateway.acme_key)
    page.goto(f"{gateway.url}/ui/actions")
    expected = {r.action.id: str(r.status) for r in actions.list("acme")}
    assert expected == {"a0": "done", "a1": "refused", "a2": "pending_approval", "a3": "refused"}
    for action_id, state in expected.items():
        row = page.locator(f'table[data-testid=actions] tr[data-id="{action_id}"]')
        assert row.locator("[data-testid=state]").inner_text() == state
    assert "rate_limit" in page.locator('table[data-testid=actions] tr[data-id="a1"]').inner_text()
    assert "unknown_platform" in page.locator('table[data-testid=actions] tr[data-id="a3"]').inner_text()
    assert page.locator('table[data-testid=actions] tr[data-id="a4"]').count() == 0  # chatdev's
    task = page.locator('table[data-testid=tasks] tr[data-id="t1"]')
    assert task.locator("[data-testid=task-state]").inner_text() == "in_progress"
    assert "writer" in task.inner_text()
    assert int(task.locator("td[data-mc]").get_attribute("data-mc")) == spent
    shoot(page, "actions", tmp_path)
    page.goto(f"{gateway.url}/ui/actions?status=refused")
    assert page.locator("table[data-testid=actions] tr[data-id]").count() == 2
