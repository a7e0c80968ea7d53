"""Wallets on a PostgreSQL ledger: the post-settle hook and a posting pass agree with the usage log."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import Period
from comptroller.domain.usage import Usage
from comptroller.domain.wallets.allocation import InfraItem
from comptroller.domain.wallets.fees import FeeSchedule, service_fee_mc
from comptroller.domain.wallets.pnl import PnlBy, pnl_rows, pnl_totals
from comptroller.engine import CallRequest, Engine
from comptroller.prices import PriceBook
from comptroller.storage.postgres import PostgresStore
from comptroller.storage.transfers_postgres import PostgresTransferStore
from comptroller.wallet_posting import WalletPosting, post_usage
from ledger_kit import attribution
from postgres.pg_kit import PG_URL, new_schema

FEES = FeeSchedule(base_fee_mc=500, margin=Decimal("0.3"), task_fee_mc=2_000)
GPU = InfraItem(name="gpu", cost_mc=346_000, period=Period.DAY)


def test_hook_and_pass_on_postgres() -> None:
    """Calls settled over two days: costs and fees posted by the hook, infra by the pass; the P&L matches the log."""
    schema = new_schema()
    ledger = PostgresStore(PG_URL, schema=schema, max_size=2, durable=False)
    wallets = PostgresTransferStore(PG_URL, schema=schema)
    clock = VirtualClock(datetime(2026, 3, 1, 10, tzinfo=UTC))
    engine = Engine(store=ledger, prices=PriceBook(), clock=clock, on_settled=[WalletPosting(wallets, FEES)])
    for n in range(6):
        who = attribution(f"agent{n % 3}", tenant="acme", task=f"job{n % 2}")
        admission = engine.admit(CallRequest(attribution=who, model="gpt-4o-mini", input_tokens_max=20_000,
                                             max_tokens=300))
        assert admission.reservation is not None
        engine.settle(admission.reservation, Usage(10_000 + n, 200))
        clock.advance(8 * 3600)
    records = list(ledger.usage_records())
    summary = post_usage(records, wallets, fees=FEES, infra=[GPU])
    days = {r.reserved_at.date() for r in records}
    assert summary.applied == len({(r.reserved_at.date(), r.attribution.agent) for r in records})  # infra only
    assert {t.kind for t in wallets.transfers()} == {"llm_cost", "service_fee", "task_fee", "infra"}
    assert sum(a.balance_mc for a in wallets.balances()) == 0
    total = pnl_totals(pnl_rows(wallets.transfers(), by=PnlBy.AGENT, period=Period.DAY))
    tasks = {(r.attribution.agent, r.attribution.task) for r in records}
    assert total.llm_cost_mc == sum(r.cost_mc for r in records)
    assert total.revenue_mc == sum(service_fee_mc(r.cost_mc, FEES) for r in records) + len(tasks) * FEES.task_fee_mc
    assert total.infra_mc == len(days) * GPU.cost_mc
    assert post_usage(records, wallets, fees=FEES, infra=[GPU]).applied == 0
    wallets.close()
    ledger.close()
