"""Wallets wired in: the engine's post-settle hook posts each call's cost and fee; the wallet CLI moves fees."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner, Result

from comptroller.bootstrap import build_engine
from comptroller.cli.main import app
from comptroller.clock import VirtualClock
from comptroller.config import load_policy
from comptroller.domain.pricing import cost_mc
from comptroller.domain.usage import Usage
from comptroller.domain.wallets.accounts import agent_wallet, provider_account, tenant_wallet
from comptroller.domain.wallets.fees import service_fee_mc
from comptroller.domain.wallets.transfers import Transfer
from comptroller.engine import CallRequest
from comptroller.storage.transfers_sqlite import SQLiteTransferStore
from ledger_kit import attribution

POLICY = """
namespace = "ns"
output_cap_tokens = 1000
[fees]
base_fee_usd = "0.001"
margin = "0.2"
"""


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_settle_posts_cost_and_fee_at_once(tmp_path: Path) -> None:
    """With [fees], a settled call's cost leaves the agent's wallet and its fee leaves the tenant's, before any pass."""
    path = tmp_path / "policy.toml"
    path.write_text(POLICY, encoding="utf-8")
    policy = load_policy(path)
    db = tmp_path / "ledger.db"
    engine = build_engine(db_url=f"sqlite:///{db}", policy=policy, clock=VirtualClock())
    who = attribution("writer", tenant="acme", namespace="ns")
    admission = engine.admit(CallRequest(attribution=who, model="gpt-4o-mini", input_tokens_max=50_000, max_tokens=500))
    assert admission.reservation is not None
    usage = Usage(40_000, 400)
    engine.settle(admission.reservation, usage)
    engine.settle(admission.reservation, usage)  # a repeat settle posts nothing more
    cost = cost_mc(engine.prices.price("gpt-4o-mini", admission.reservation.created_at), usage)
    fee = service_fee_mc(cost, policy.fees.schedule())  # type: ignore[union-attr]
    wallets = SQLiteTransferStore(db)
    assert wallets.balance(provider_account("gpt-4o-mini")).balance_mc == cost > 0
    assert wallets.balance(tenant_wallet(who)).balance_mc == -fee
    assert wallets.balance(agent_wallet(who)).balance_mc == fee - cost
    assert len(wallets.transfers()) == 2
    wallets.close()


def test_wallet_cli_knowledge_fee_retry_and_floor(tmp_path: Path) -> None:
    """A knowledge fee moves once; its retry is exists; another amount under its id is refused; a floor holds."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    tutor, student = "agent:ns|acme|tutor", "agent:ns|acme|student"
    args = ["wallet", "transfer", "--from", student, "--to", tutor, "--id", "lesson-1", "--db", db]
    first = _cli(*args, "--amount-usd", "0.25")
    assert first.exit_code == 0 and first.stdout.startswith("ok:"), first.output
    again = _cli(*args, "--amount-usd", "0.25")
    assert again.exit_code == 0 and again.stdout.startswith("exists:"), again.stdout
    other = _cli(*args, "--amount-usd", "0.30")
    assert other.exit_code == 1 and other.stdout.startswith("exists_with_different_fields:"), other.stdout
    assert _cli("wallet", "floor", "--account", student, "--floor-usd", "-0.30", "--db", db).exit_code == 0
    over = _cli("wallet", "transfer", "--from", student, "--to", tutor, "--id", "lesson-2", "--amount-usd", "0.10",
                "--db", db)
    assert over.exit_code == 1 and over.stdout.startswith("insufficient_funds:"), over.stdout
    wallets = SQLiteTransferStore(tmp_path / "ledger.db")
    assert wallets.balance(tutor).balance_mc == 25_000 == -wallets.balance(student).balance_mc
    wallets.close()
    bad = _cli("wallet", "transfer", "--from", "bob", "--to", tutor, "--id", "x", "--amount-usd", "1", "--db", db)
    assert bad.exit_code == 2 and "no known kind" in bad.output


def test_pnl_from_to_selects_transfers_by_time(tmp_path: Path) -> None:
    """pnl --from/--to counts only transfers in [from, to): a fee on 2 March is outside a window from 3 March."""
    db = tmp_path / "ledger.db"
    wallets = SQLiteTransferStore(db)
    a, b = "agent:ns|t|a", "agent:ns|t|b"
    wallets.create_transfers([Transfer("k1", a, b, 300, "knowledge_fee", datetime(2026, 3, 2, tzinfo=UTC)),
                              Transfer("k2", a, b, 500, "knowledge_fee", datetime(2026, 3, 3, 8, tzinfo=UTC))])
    wallets.close()
    out = tmp_path / "pnl.json"
    done = _cli("pnl", "--db", f"sqlite:///{db}", "--no-post", "--period", "total", "--from", "2026-03-03",
                "--to", "2026-03-04", "--json", str(out))
    assert done.exit_code == 0, done.output
    rows = {r["scope"]: r["fees_net_mc"] for r in json.loads(out.read_text())["rows"]}
    assert rows == {"ns|t|a": -500, "ns|t|b": 500}
    bad = _cli("pnl", "--db", f"sqlite:///{db}", "--from", "March")
    assert bad.exit_code == 2 and "--from must be an ISO date" in bad.output
