"""The storm simulator: its numbers come from GroupService.dispatch and the ledger, and show O(k) with dispatch."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.budgets import Budget
from comptroller.domain.money import usd_to_mc_half_up
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from comptroller.simulate import StormConfig, StormRow, TokenSizes, run_storm
from comptroller.storage.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "data" / "traces" / "chatdev_warehouse.jsonl"
BOOK = PriceBook()


@pytest.fixture(scope="module")
def sizes() -> TokenSizes:
    """Token pools drawn from the shipped ChatDev traces."""
    return TokenSizes.from_traces([TRACE])


def _run(config: StormConfig, sizes: TokenSizes) -> tuple[list[StormRow], dict[tuple[str, int], LedgerStore]]:
    stores: dict[tuple[str, int], LedgerStore] = {}

    def store_for(strategy: str, n: int) -> LedgerStore:
        stores[(strategy, n)] = MemoryStore()
        return stores[(strategy, n)]

    return run_storm(config, sizes, BOOK, store_for=store_for), stores


def test_token_pools_come_from_the_traces(sizes: TokenSizes) -> None:
    """Prompts are each run's first input (one per run), messages every call's output."""
    lines = [json.loads(line) for line in TRACE.read_text().splitlines() if line.strip()]
    assert len(sizes.prompts) == len({r["run_id"] for r in lines})
    assert sorted(sizes.messages) == sorted(r["output_tokens"] for r in lines if r["output_tokens"] > 0)


def test_the_dispatch_rows_are_the_services_logged_decisions_and_the_ledgers_usage(sizes: TokenSizes) -> None:
    """Replies, tokens and cost of each run equal the ledger's usage log, and the dispatch run's calls are exactly
    the responders GroupService.dispatch logged."""
    config = StormConfig(agents=(5, 13, 40), messages=12, k=2)
    rows, stores = _run(config, sizes)
    for row in rows:
        store = stores[(row.strategy, row.agents)]
        usage = list(store.usage_records())
        assert row.replies == len(usage) and row.refused == 0
        assert row.input_tokens == sum(u.usage.input_tokens for u in usage)
        assert row.output_tokens == sum(u.usage.output_tokens for u in usage)
        assert row.cost_mc == sum(u.cost_mc for u in usage)
        assert {u.attribution.conversation for u in usage} <= {"storm"}
        if row.strategy == "dispatch":
            events = store.events("dispatch")
            assert len(events) == config.messages
            logged = [(e.detail["message"], p["agent"]) for e in events for p in e.detail["responders"]]
            called = [tuple(u.idempotency_key.split(":")) for u in usage]
            assert [(f"in{i}", a) for i, a in called] == logged
            assert all(len(e.detail["responders"]) <= config.k for e in events)
        if row.strategy == "everyone":
            assert row.replies == row.agents * config.messages


def test_tokens_per_message_stay_flat_in_n_with_dispatch_and_grow_without(sizes: TokenSizes) -> None:
    """Once every topic has k members, dispatch's tokens per input barely move with N; everyone's grow with N."""
    config = StormConfig(agents=(24, 48, 96), messages=15, k=3, topics=8, strategies=("everyone", "dispatch"))
    rows, _ = _run(config, sizes)
    dispatch = [r.tokens_per_input for r in rows if r.strategy == "dispatch"]
    everyone = [r.tokens_per_input for r in rows if r.strategy == "everyone"]
    assert max(dispatch) / min(dispatch) < 1.5
    assert everyone[2] / everyone[0] > 3.0
    assert all(r.replies_per_input <= config.k for r in rows if r.strategy == "dispatch")


def test_the_group_budget_holds_on_every_strategys_calls(sizes: TokenSizes) -> None:
    """With a group budget every strategy's settled spend stays within it; no dispatch hits it and is refused."""
    config = StormConfig(agents=(30,), messages=10, budget_usd=Decimal("0.05"))
    rows, stores = _run(config, sizes)
    limit = usd_to_mc_half_up(Decimal("0.05"))
    for row in rows:
        (budget,) = stores[(row.strategy, row.agents)].budgets()
        assert isinstance(budget, Budget) and budget.limit_mc == limit
        assert row.cost_mc <= limit
    everyone = next(r for r in rows if r.strategy == "everyone")
    assert everyone.refused > 0


def test_simulate_group_cli_writes_the_plot_and_rows(tmp_path: Path) -> None:
    """The command prints the table and the story, and writes a self-contained HTML plot and JSON rows."""
    html, rows = tmp_path / "storm.html", tmp_path / "storm.json"
    result = CliRunner().invoke(app, ["simulate", "group", "--agents", "5,8", "--messages", "4", "--trace",
                                      str(TRACE), "--html", str(html), "--json", str(rows)])
    assert result.exit_code == 0, result.output
    assert "the cost curve does not flatten" in " ".join(result.output.split())
    page = html.read_text()
    assert "plotly" in page and "<script src=" not in page
    assert [(r["strategy"], r["agents"]) for r in json.loads(rows.read_text())] == [
        (s, n) for s in ("everyone", "mentions", "dispatch") for n in (5, 8)]


@pytest.mark.parametrize(("args", "message"), [
    (["--agents", "5,x"], "--agents must be room sizes"),
    (["--k", "0"], "k (the most responders per message) must be an integer >= 1"),
    (["--trace", "missing.jsonl"], "no trace file missing.jsonl"),
])
def test_simulate_group_cli_bad_input(args: list[str], message: str) -> None:
    """Bad options exit with status 2 and a message naming the fix."""
    result = CliRunner().invoke(app, ["simulate", "group", "--messages", "2", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_group_check_and_dispatch_commands(tmp_path: Path) -> None:
    """`group check` lists members and rules; `group dispatch` shows who answers and why the others do not."""
    path = tmp_path / "groups.toml"
    path.write_text('[groups.room]\n[[groups.room.members]]\nagent = "ana"\nrole = "writer"\n'
                    'description = "python api"\n[[groups.room.members]]\nagent = "dee"\nrole = "judge"\n'
                    'decides = true\n[groups.room.roles.judge]\nanswers = ["draft"]\n')
    runner = CliRunner()
    checked = runner.invoke(app, ["group", "check", str(path)])
    assert checked.exit_code == 0 and "ana" in checked.output and "judge" in checked.output
    decided = runner.invoke(app, ["group", "dispatch", str(path), "room", "the python api is down"])
    assert decided.exit_code == 0, decided.output
    assert "ranked" in decided.output and "role_rule" in decided.output
    unknown = runner.invoke(app, ["group", "dispatch", str(path), "room", "@bob hi"])
    assert unknown.exit_code == 2 and "'bob' is not a member" in unknown.output
