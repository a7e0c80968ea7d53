"""The HTML reports: a P&L section in replay's report when the policy has a fee schedule, and a cost-per-key table
in ``comptroller report``'s when calls came with API keys, with the terminal's columns.

The P&L figures are checked against an independent computation from the trace and the fee formula
(max(base fee, cost x (1 + margin)), rounded up to a millicent); the key table against the ledger.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.reports.terminal import GROUP_HEADER
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import reserve_request

POLICY = """
namespace = "replay"
output_cap_tokens = 1024
[prices."house-model"]
input_mtok = "1000"
output_mtok = "2000"
[fees]
base_fee_usd = "0.01"
margin = "0.5"
margin_floor = "0.4"
"""
CALLS = [("acme/run-1", "writer", 100, 10), ("acme/run-1", "judge", 400, 40), ("globex/run-2", "writer", 3, 1)]


def _cost_mc(inp: int, out: int) -> int:
    return (inp * 1000 + out * 2000) * 100_000 // 1_000_000  # $ per Mtok x tokens, exact in these numbers


def _table(page: str, title: str) -> list[list[str]]:
    match = re.search(rf"<h2>{re.escape(title)}</h2><table>(.*?)</table>", page, re.S)
    assert match is not None, f"no table {title!r}"
    return [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", match.group(1))]


def test_replay_with_a_fee_schedule_shows_the_pnl_in_html_and_json(tmp_path: Path) -> None:
    """P&L by tenant and agent: revenue = the fees, LLM cost = the calls' cost; an agent below the floor is flagged."""
    trace, policy = tmp_path / "t.jsonl", tmp_path / "p.toml"
    start = datetime(2026, 3, 2, 9, tzinfo=UTC)
    trace.write_text("".join(json.dumps({"run_id": run, "seq": i + 1, "ts": (start + timedelta(minutes=i)).isoformat(),
                                         "agent": agent, "model": "house-model", "input_tokens": inp,
                                         "output_tokens": out}) + "\n"
                             for i, (run, agent, inp, out) in enumerate(CALLS)), encoding="utf-8")
    policy.write_text(POLICY, encoding="utf-8")
    html_out, json_out = tmp_path / "r.html", tmp_path / "r.json"
    result = CliRunner().invoke(app, ["replay", str(trace), "--policy", str(policy), "--html", str(html_out),
                                      "--json", str(json_out)])
    assert result.exit_code == 0, result.output
    pnl = json.loads(json_out.read_text(encoding="utf-8"))["pnl"]
    costs = [_cost_mc(inp, out) for _, _, inp, out in CALLS]
    fees = [max(1000, math.ceil(c * Decimal("1.5"))) for c in costs]
    assert pnl["tenant"]["total"]["llm_cost_mc"] == sum(costs)
    assert pnl["tenant"]["total"]["revenue_mc"] == sum(fees)
    acme = next(r for r in pnl["tenant"]["rows"] if r["scope"] == "replay|acme")
    assert acme["revenue_mc"] == fees[0] + fees[1] and acme["llm_cost_mc"] == costs[0] + costs[1]
    flagged = {r["scope"] for r in pnl["agent"]["rows"] if r["flagged"]}
    margin = {f"replay|{run.split('/')[0]}|{agent}": (f - c) / f
              for (run, agent, _, _), c, f in zip(CALLS, costs, fees, strict=True)}
    assert flagged == {scope for scope, m in margin.items() if m < 0.4}
    page = html_out.read_text(encoding="utf-8")
    tenant_rows = _table(page, "P&amp;L by tenant (chargeback)")
    assert tenant_rows[0][:3] == ["tenant", "revenue", "LLM cost"]
    assert {r[0] for r in tenant_rows[1:]} == {"replay|acme", "replay|globex", "total"}
    assert _table(page, "P&amp;L by agent")


def test_report_html_has_a_cost_per_key_table_with_the_terminal_columns(tmp_path: Path) -> None:
    """Calls with API keys give a 'Cost by API key' table (terminal columns), one row per key, summing to the total."""
    path = tmp_path / "ledger.db"
    store = SQLiteStore(str(path))
    at = datetime(2026, 3, 2, 9, tzinfo=UTC)
    for i, (key_id, cost) in enumerate((("k_a", 300), ("k_a", 200), ("k_b", 700), (None, 50))):
        who = Attribution(namespace="prod", tenant="acme", agent="bot", key_id=key_id)
        held = store.reserve(reserve_request(f"c{i}", 10_000, who=who), at)
        assert held.reservation is not None
        store.settle(held.reservation.id, Usage(10, 5), cost, at)
    store.close()
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "--db", f"sqlite:///{path}", "--html", str(out)])
    assert result.exit_code == 0, result.output
    rows = _table(out.read_text(encoding="utf-8"), "Cost by API key")
    assert tuple(rows[0]) == GROUP_HEADER
    assert [(r[0], r[1]) for r in rows[1:]] == [("k_b", "1"), ("k_a", "2"), ("-", "1")]
    assert _table(out.read_text(encoding="utf-8"), "Cost by tenant")
