"""``comptroller ui --db URL`` as a user runs it: a real subprocess on a loopback port, on a replayed ledger
whose usage ``comptroller pnl`` posted to the wallets.

Every wait is bounded (the server must answer within 60 s, and is stopped within 10 s). The Wallets
page's P&L is compared with ``comptroller pnl --json`` of the same ledger and policy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_ui_browser import shoot
from ui_kit import POLICY, login_client

from comptroller.domain.money import format_usd
from comptroller.storage.keys import SQLiteKeyStore, new_key
from comptroller.storage.sqlite import SQLiteStore

ADMIN_KEY = "ck-uicliadmin.0123456789abcdef0123456789abcdef"  # the environment's admin key (no stored record)
START_S = 60.0
FEES = """
[fees]
margin = "0.5"
platform_share = "0.10"
margin_floor = "0.10"

[[infra]]
name = "gpu-node"
cost_usd = "0.05"
period = "day"
basis = "tokens"
allocate_to = "agent"
"""


@dataclass
class CliUi:
    """A running ``comptroller ui``: its URL, ledger file, policy, a chatdev tenant key and the pnl JSON."""

    url: str
    db: Path
    policy: Path
    chatdev_key: str
    pnl: dict[str, Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from comptroller.cli.main import app; app()", *args],
                          capture_output=True, text=True, timeout=240, check=False, env=env)


@pytest.fixture(scope="module")
def cli_ui(replayed_ledger: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliUi]:
    """``comptroller pnl`` then ``comptroller ui`` on a copy of the replayed ledger, with a fees policy."""
    home = tmp_path_factory.mktemp("cli-ui")
    db = home / "ledger.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{replayed_ledger}{suffix}").exists():
            shutil.copy(f"{replayed_ledger}{suffix}", f"{db}{suffix}")
    policy = home / "policy.toml"
    policy.write_text(POLICY.read_text(encoding="utf-8") + FEES, encoding="utf-8")
    url = f"sqlite:///{db}"
    out = home / "pnl.json"
    posted = _cli("pnl", "--policy", str(policy), "--by", "agent", "--period", "total", "--json", str(out),
                  "--db", url)
    assert posted.returncode == 0, posted.stderr[-2000:]
    keys = SQLiteKeyStore(db)
    record, chatdev_key = new_key(tenant="chatdev")
    keys.add(record)
    keys.close()
    port = _free_port()
    env = {**os.environ, "COMPTROLLER_ADMIN_KEY": ADMIN_KEY}
    server = subprocess.Popen(
        [sys.executable, "-c", "from comptroller.cli.main import app; app()", "ui", "--db", url, "--policy",
         str(policy), "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert server.poll() is None, f"comptroller ui exited: {server.communicate(timeout=10)}"
            assert time.monotonic() < deadline, f"comptroller ui did not answer within {START_S:.0f} s"
            try:
                if httpx.get(f"{base}/ui/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield CliUi(base, db, policy, chatdev_key, json.loads(out.read_text(encoding="utf-8")))
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def test_cli_ui_serves_the_ledger_to_the_admin_key(cli_ui: CliUi) -> None:
    """Logged in with the environment's admin key, the overview of tenant chatdev over its whole range shows the
    usage log's total, and every agent's cost."""
    store = SQLiteStore(cli_ui.db)
    records = [r for r in store.usage_records() if r.attribution.tenant == "chatdev"]
    store.close()
    first, last = min(r.resolved_at.date() for r in records), max(r.resolved_at.date() for r in records)
    client = login_client(cli_ui.url, ADMIN_KEY)
    page = client.get(f"/ui/?tenant=chatdev&start={first}&end={last}&group_by=agent")
    assert page.status_code == 200
    total = sum(r.cost_mc for r in records)
    assert total > 0
    assert f'data-testid="total">{format_usd(total)}<' in page.text
    for agent in {r.attribution.agent for r in records}:
        cost = sum(r.cost_mc for r in records if r.attribution.agent == agent)
        assert f'<tr data-key="{agent}">' in page.text and f'data-mc="{cost}"' in page.text, agent


def test_cli_ui_wallets_page_equals_comptroller_pnl(cli_ui: CliUi, page_on: Any, tmp_path: Path) -> None:
    """The Wallets page (total period) shows each agent's revenue, LLM cost and margin as ``comptroller pnl
    --json`` computed them, with the same below-margin flags, and the wallet balances sum to zero."""
    page = page_on(cli_ui.url)
    page.goto(f"{cli_ui.url}/ui/login")
    page.fill("input[name=key]", ADMIN_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{cli_ui.url}/ui/")
    page.goto(f"{cli_ui.url}/ui/wallets?period=total")
    rows = cli_ui.pnl["rows"]
    assert rows and any(r["flagged"] for r in rows) and not all(r["flagged"] for r in rows)
    for r in rows:
        row = page.locator(f'table[data-testid=pnl-agent] tr[data-scope="{r["scope"]}"]')
        assert [int(x) for x in row.locator("td[data-mc]").evaluate_all("c => c.map(x => x.dataset.mc)")] == [
            r["revenue_mc"], r["llm_cost_mc"]], r["scope"]
        assert int(row.locator("td[data-margin-mc]").get_attribute("data-margin-mc")) == r["margin_mc"]
        assert row.locator("[data-testid=below-margin]").count() == int(r["flagged"]), r["scope"]
    balances = page.locator("table[data-testid=balances] td[data-mc]").evaluate_all("c => c.map(x => x.dataset.mc)")
    assert balances and sum(int(b) for b in balances) == 0
    shoot(page, "wallets", tmp_path)
    page.goto(f"{cli_ui.url}/ui/cache")
    page.wait_for_load_state("networkidle")


def test_cli_ui_tenant_key_sees_only_its_wallets(cli_ui: CliUi) -> None:
    """Chatdev's stored key sees chatdev's agent wallets and P&L rows, never the platform's or providers'
    accounts."""
    client = login_client(cli_ui.url, cli_ui.chatdev_key)
    page = client.get("/ui/wallets?period=total")
    assert page.status_code == 200
    assert 'data-account="agent:replay|chatdev|' in page.text
    assert "platform:revenue" not in page.text and "provider:" not in page.text
    namespace = tomllib.loads(cli_ui.policy.read_text(encoding="utf-8"))["namespace"]
    scopes = re.findall(r'<tr data-scope="([^"]+)"', page.text)
    assert scopes and all(s == f"{namespace}|chatdev" or s.startswith(f"{namespace}|chatdev|") for s in scopes)
