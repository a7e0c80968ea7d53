"""Posting the usage log to wallets: targets per call, idempotent passes, corrections as adjustments, P&L rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.budgets import Period
from comptroller.domain.ledger import UsageRecord
from comptroller.domain.usage import Usage
from comptroller.domain.wallets.accounts import (
    PLATFORM_REVENUE,
    agent_wallet,
    infra_account,
    provider_account,
    tenant_wallet,
)
from comptroller.domain.wallets.allocation import InfraItem
from comptroller.domain.wallets.fees import FeeSchedule, service_fee_mc
from comptroller.domain.wallets.pnl import PnlBy, parent_scope, pnl_rows, pnl_totals
from comptroller.domain.wallets.postings import adjustments
from comptroller.domain.wallets.transfers import Transfer, TransferCode
from comptroller.storage.transfers import MemoryTransferStore
from comptroller.wallet_posting import WalletPosting, post_usage
from ledger_kit import attribution

T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)
FEES = FeeSchedule(base_fee_mc=200, margin=Decimal("0.5"), task_fee_mc=1_000)


def _record(n: int, cost_mc: int, *, agent: str = "a1", tenant: str = "t1", task: str | None = "job",
            outcome: str = "settled", at: datetime = T0) -> UsageRecord:
    return UsageRecord(reservation_id=f"r{n}", idempotency_key=f"k{n}",
                       attribution=attribution(agent, tenant=tenant, task=task, conversation="c"),
                       model="gpt-4o-mini", reserved_at=at, resolved_at=at + timedelta(seconds=1),
                       usage=Usage(100 * (n + 1), 10), cost_mc=cost_mc, ceiling_mc=cost_mc * 2, outcome=outcome)


def _net(store: MemoryTransferStore, account: str) -> int:
    return store.balance(account).balance_mc


def test_a_call_charges_the_agent_and_pays_the_provider_and_the_tenant_pays_the_fee() -> None:
    """One call: cost agent -> provider, fee tenant -> agent, task fee once per agent and task."""
    store = MemoryTransferStore()
    records = [_record(0, 1_000), _record(1, 100)]
    post_usage(records, store, fees=FEES)
    who = records[0].attribution
    fees = service_fee_mc(1_000, FEES) + service_fee_mc(100, FEES) + FEES.task_fee_mc
    assert _net(store, provider_account("gpt-4o-mini")) == 1_100
    assert _net(store, tenant_wallet(who)) == -fees
    assert _net(store, agent_wallet(who)) == fees - 1_100
    assert sum(a.balance_mc for a in store.balances()) == 0


def test_a_second_pass_posts_nothing() -> None:
    """Posting the same log twice applies nothing the second time."""
    store = MemoryTransferStore()
    records = [_record(n, 10 * n) for n in range(5)]
    first = post_usage(records, store, fees=FEES)
    again = post_usage(records, store, fees=FEES)
    assert first.applied > 0 and again.applied == 0 and not again.problems


def test_a_corrected_charge_is_adjusted_not_rewritten() -> None:
    """An unknown_outcome ceiling corrected to the real cost leaves the first transfer and adds the difference back."""
    store = MemoryTransferStore()
    ceiling = _record(0, 5_000, outcome="unknown_outcome")
    post_usage([ceiling], store, fees=FEES)
    settled = replace(ceiling, cost_mc=1_200, outcome="settled_late")
    post_usage([settled], store, fees=FEES)
    who = ceiling.attribution
    assert _net(store, provider_account("gpt-4o-mini")) == 1_200
    assert _net(store, agent_wallet(who)) == service_fee_mc(1_200, FEES) + FEES.task_fee_mc - 1_200
    assert store.transfer("llm:r0") is not None and store.transfer("llm:r0:adj1") is not None
    released = replace(ceiling, cost_mc=0, outcome="released_late")
    post_usage([released], store, fees=FEES)
    assert _net(store, provider_account("gpt-4o-mini")) == 0
    assert _net(store, tenant_wallet(who)) == -FEES.task_fee_mc


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=6))
def test_any_sequence_of_corrections_ends_at_the_last_amount(amounts: list[int]) -> None:
    """Whatever amounts a target goes through, the id and its adjustments net to the last one."""
    stored: dict[str, Transfer] = {}
    target = Transfer("x", "agent:a", "provider:m", 0, "llm_cost", T0)
    for amount in amounts:
        for t in adjustments([replace(target, amount_mc=amount)], stored):
            stored[t.id] = t
    net = sum(t.amount_mc if t.debit_account == "agent:a" else -t.amount_mc for t in stored.values())
    assert net == amounts[-1]


def test_infra_is_allocated_per_day_and_sums_to_its_cost() -> None:
    """A daily item is charged in full on each day with calls, split by tokens, and nothing on idle days."""
    store = MemoryTransferStore()
    gpu = InfraItem(name="gpu", cost_mc=346_000, period=Period.DAY)
    records = [_record(0, 1, agent="a1"), _record(1, 1, agent="a2"), _record(2, 1, at=T0 + timedelta(days=3))]
    post_usage(records, store, infra=[gpu])
    assert _net(store, infra_account("gpu")) == 2 * gpu.cost_mc
    tokens = {r.reservation_id: r.usage.input_tokens + r.usage.output_tokens for r in records}
    a2_infra = store.balance(agent_wallet(records[1].attribution)).debits_mc - records[1].cost_mc
    exact = Fraction(gpu.cost_mc * tokens["r1"], tokens["r0"] + tokens["r1"])
    assert exact - 1 < a2_infra < exact + 1

def test_pnl_by_agent_and_tenant() -> None:
    """Agent rows count fees earned, costs and knowledge fees; tenant rows count fees paid and their agents' costs."""
    store = MemoryTransferStore()
    records = [_record(0, 1_000, agent="a1"), _record(1, 3_000, agent="a2")]
    post_usage(records, store, fees=FEES)
    a1, a2 = (agent_wallet(r.attribution) for r in records)
    assert store.create_transfers([Transfer("k1", a1, a2, 700, "knowledge_fee", T0)])[0].code is TransferCode.OK
    assert store.create_transfers([Transfer("dep", "external:bank", a1, 10**6, "deposit", T0)])[0].code.applied
    rows = {r.scope: r for r in pnl_rows(store.transfers(), by=PnlBy.AGENT, period=Period.TOTAL,
                                         margin_floor=Decimal("0.4"))}
    fee1, fee2 = service_fee_mc(1_000, FEES), service_fee_mc(3_000, FEES)
    r1, r2 = rows["ns|t1|a1"], rows["ns|t1|a2"]
    assert (r1.revenue_mc, r1.llm_cost_mc, r1.fees_net_mc) == (fee1 + FEES.task_fee_mc, 1_000, -700)
    assert (r2.revenue_mc, r2.llm_cost_mc, r2.fees_net_mc) == (fee2 + FEES.task_fee_mc, 3_000, 700)
    assert r1.flagged == (r1.margin_mc < Decimal("0.4") * r1.revenue_mc)
    tenant = pnl_rows(store.transfers(), by=PnlBy.TENANT, period=Period.TOTAL)
    assert [(t.scope, t.revenue_mc, t.llm_cost_mc) for t in tenant] == [
        ("ns|t1", fee1 + fee2 + 2 * FEES.task_fee_mc, 4_000)]
    assert pnl_totals(rows.values()).margin_mc == tenant[0].margin_mc  # knowledge fees cancel out


def test_parent_scope_respects_escapes() -> None:
    """The parent of an agent scope is its tenant's, even when an id holds an escaped '|'."""
    assert parent_scope("ns|t1|a1") == "ns|t1"
    assert parent_scope("ns|t\\|x|a\\|b") == "ns|t\\|x"


def test_hook_posts_first_charges_at_once_and_corrections_in_full() -> None:
    """The post-settle hook creates a first charge directly and follows a late correction to the real cost."""
    store = MemoryTransferStore()
    hook = WalletPosting(store, FEES)
    ceiling = _record(0, 5_000, outcome="unknown_outcome")
    hook(ceiling)
    hook(ceiling)  # a repeat is a no-op
    assert _net(store, provider_account("gpt-4o-mini")) == 5_000
    hook(replace(ceiling, cost_mc=1_200, outcome="settled_late"))
    assert _net(store, provider_account("gpt-4o-mini")) == 1_200
    assert _net(store, tenant_wallet(ceiling.attribution)) == -(service_fee_mc(1_200, FEES) + FEES.task_fee_mc)


def test_platform_share_of_each_fee_goes_to_platform_revenue() -> None:
    """With platform_share, the agent pays the platform its share of each fee (rounded down); the tenant's bill is
    unchanged and the agent's revenue is net of the take."""
    schedule = replace(FEES, platform_share=Decimal("0.1"))
    store = MemoryTransferStore()
    records = [_record(0, 1_001), _record(1, 333)]
    post_usage(records, store, fees=schedule)
    fees = [service_fee_mc(1_001, schedule), service_fee_mc(333, schedule), schedule.task_fee_mc]
    takes = [int(Decimal(f) * Decimal("0.1")) for f in fees]  # floor of a positive Decimal
    assert _net(store, PLATFORM_REVENUE) == sum(takes)
    row = pnl_rows(store.transfers(), by=PnlBy.AGENT, period=Period.TOTAL)[0]
    assert row.revenue_mc == sum(fees) - sum(takes)
    tenant = pnl_rows(store.transfers(), by=PnlBy.TENANT, period=Period.TOTAL)[0]
    assert tenant.revenue_mc == sum(fees)
    assert sum(a.balance_mc for a in store.balances()) == 0
