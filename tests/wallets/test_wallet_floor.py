"""Wallet floors at admit, on every backend: a prepaid agent is refused insufficient_funds, exactly, in the
reservation's transaction; transfers and settles move the floor row; LLM-cost postings are not counted twice."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from comptroller.clock import VirtualClock
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.pricing import ceiling_mc, cost_mc
from comptroller.domain.usage import Usage
from comptroller.domain.wallets.accounts import agent_wallet, external_account
from comptroller.domain.wallets.floors import FloorState, floor_key
from comptroller.domain.wallets.transfers import Transfer, TransferCode
from comptroller.engine import CallRequest, Engine
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from comptroller.storage.memory import MemoryStore
from comptroller.storage.sqlite import SQLiteStore
from comptroller.storage.transfers import MemoryTransferStore, TransferStore
from comptroller.storage.transfers_sqlite import SQLiteTransferStore
from comptroller.wallet_posting import post_usage
from ledger_kit import attribution
from postgres.pg_kit import PG_URL, new_schema

START = datetime(2025, 6, 1, 9, tzinfo=UTC)
MODEL = "gpt-4o-mini"
IN, OUT = 2_000, 500
WHO = attribution("writer", tenant="acme")
WALLET = agent_wallet(WHO)
CEILING = ceiling_mc(PriceBook().price(MODEL, START), input_tokens_max=IN, output_tokens_max=OUT)
USED = Usage(input_tokens=IN - 100, output_tokens=OUT - 1)
COST = cost_mc(PriceBook().price(MODEL, START), USED)
CALLERS, K = 64, 5


@dataclass
class Pair:
    """A ledger and the transfer store beside it (same database)."""

    ledger: LedgerStore
    wallets: TransferStore


def _pair(backend: str, directory: Path) -> Pair:
    if backend == "memory":
        ledger = MemoryStore()
        return Pair(ledger, MemoryTransferStore(ledger))
    if backend == "sqlite":
        return Pair(SQLiteStore(directory / "ledger.db"), SQLiteTransferStore(directory / "ledger.db"))
    from comptroller.storage.postgres import PostgresStore  # noqa: PLC0415 (psycopg only for this backend)
    from comptroller.storage.transfers_postgres import PostgresTransferStore  # noqa: PLC0415

    schema = new_schema()
    return Pair(PostgresStore(PG_URL, schema=schema, max_size=8), PostgresTransferStore(PG_URL, schema=schema))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """A fresh ledger and wallet store of each backend."""
    made = _pair(str(request.param), tmp_path)
    yield made
    made.wallets.close()
    made.ledger.close()


def _engine(ledger: LedgerStore) -> Engine:
    return Engine(store=ledger, prices=PriceBook(), clock=VirtualClock(START), caps=OutputCaps(default_tokens=OUT))


def _call(key: str) -> CallRequest:
    return CallRequest(WHO, MODEL, input_tokens_max=IN, max_tokens=OUT, idempotency_key=key, sends=True)


def _deposit(wallets: TransferStore, transfer_id: str, amount_mc: int, account: str = WALLET) -> TransferCode:
    return wallets.create_transfers([Transfer(transfer_id, external_account("bank"), account, amount_mc, "deposit",
                                              START)])[0].code


def _row(ledger: LedgerStore) -> FloorState:
    stored = ledger.state(floor_key(WALLET))
    assert stored is not None
    return FloorState.from_record(stored.record, stored.version)


def test_a_prepaid_agent_is_refused_insufficient_funds_at_its_floor(pair: Pair) -> None:
    """Funded for two ceilings and a little: two calls are held, the third is refused with the wallet's numbers."""
    pair.wallets.set_floor(WALLET, 0)
    assert _deposit(pair.wallets, "dep-1", 2 * CEILING + 7) is TransferCode.OK
    engine = _engine(pair.ledger)
    first, second = engine.admit(_call("a")), engine.admit(_call("b"))
    assert (first.code, second.code) == (Code.OK, Code.OK)
    refused = engine.admit(_call("c"))
    assert refused.code is Code.INSUFFICIENT_FUNDS and refused.verdict is not None
    assert dict(refused.verdict.evidence) == {
        "account": WALLET, "floor_mc": 0, "funded_mc": 2 * CEILING + 7, "spent_mc": 0, "held_mc": 2 * CEILING,
        "requested_mc": CEILING, "available_mc": 7}
    assert refused.verdict.level is not None and refused.verdict.retry_after_s is None
    assert sum(a.reserved_mc for a in pair.ledger.accounts()) == 0  # no budgets; nothing taken for the refusal
    assert first.reservation is not None
    engine.settle(first.reservation, USED)  # the hold becomes the spend; the rest of the ceiling returns
    row = _row(pair.ledger)
    assert (row.spend.settled, row.spend.held, row.available_mc) == (COST, CEILING, CEILING + 7 - COST)
    assert engine.admit(_call("d")).code is Code.INSUFFICIENT_FUNDS  # the settled cost is spent, not free
    assert second.reservation is not None
    engine.release(second.reservation)  # a released hold returns in full
    assert engine.admit(_call("d")).code is Code.OK


@pytest.mark.timeout(180)
def test_a_floor_admits_exactly_k_of_64_concurrent_callers(pair: Pair) -> None:
    """Funded for exactly K ceilings, 64 racing calls are admitted exactly K times; the row never goes below."""
    pair.wallets.set_floor(WALLET, 0)
    _deposit(pair.wallets, "dep", K * CEILING)
    engine = _engine(pair.ledger)
    barrier = threading.Barrier(CALLERS, timeout=60)

    def call(i: int) -> Code:
        barrier.wait()
        return engine.admit(_call(f"call-{i}")).code

    with ThreadPoolExecutor(max_workers=CALLERS) as pool:
        codes = Counter(pool.map(call, range(CALLERS), timeout=120))
    assert codes == Counter({Code.OK: K, Code.INSUFFICIENT_FUNDS: CALLERS - K})
    row = _row(pair.ledger)
    assert (row.spend.held, row.available_mc) == (K * CEILING, 0)


def test_a_debit_cannot_spend_money_held_by_calls_in_flight(pair: Pair) -> None:
    """A knowledge fee larger than what is left above the holds is refused insufficient_funds; a deposit adds room."""
    pair.wallets.set_floor(WALLET, 0)
    _deposit(pair.wallets, "dep", CEILING + 50)
    engine = _engine(pair.ledger)
    assert engine.admit(_call("held")).code is Code.OK
    tutor = agent_wallet(attribution("tutor", tenant="acme"))
    fee = Transfer("kf-1", WALLET, tutor, 51, "knowledge_fee", START)
    assert pair.wallets.create_transfers([fee])[0].code is TransferCode.INSUFFICIENT_FUNDS
    assert pair.wallets.create_transfers([Transfer("kf-2", WALLET, tutor, 50, "knowledge_fee", START)])[0].code \
        is TransferCode.OK
    assert engine.admit(_call("next")).code is Code.INSUFFICIENT_FUNDS
    _deposit(pair.wallets, "dep-2", CEILING)
    assert engine.admit(_call("next")).code is Code.OK
    assert _row(pair.ledger).funded_mc == 2 * CEILING


def test_posting_the_settled_cost_to_the_wallet_does_not_count_it_twice(pair: Pair) -> None:
    """After a settle, the LLM-cost posting moves the wallet's balance but not the floor row (the settle counted it)."""
    pair.wallets.set_floor(WALLET, 0)
    _deposit(pair.wallets, "dep", 3 * CEILING)
    engine = _engine(pair.ledger)
    held = engine.admit(_call("a"))
    assert held.reservation is not None
    engine.settle(held.reservation, USED)
    before = _row(pair.ledger)
    summary = post_usage(pair.ledger.usage_records(), pair.wallets)
    assert summary.applied == 1 and summary.problems == {}
    assert pair.wallets.balance(WALLET).balance_mc == 3 * CEILING - COST
    after = _row(pair.ledger)
    assert (after.funded_mc, after.spend.settled, after.available_mc) == (
        before.funded_mc, COST, 3 * CEILING - COST)


def test_a_removed_floor_refuses_nothing_and_a_floor_set_again_is_exact(pair: Pair) -> None:
    """Without a floor the wallet may go negative; the row kept counting, so a floor set again sees the spend."""
    pair.wallets.set_floor(WALLET, 0)
    engine = _engine(pair.ledger)
    assert engine.admit(_call("a")).code is Code.INSUFFICIENT_FUNDS
    pair.wallets.set_floor(WALLET, None)
    free = engine.admit(_call("b"))
    assert free.code is Code.OK and free.reservation is not None
    engine.settle(free.reservation, USED)
    pair.wallets.set_floor(WALLET, -CEILING - COST)  # a credit line of one ceiling beyond what was spent
    assert engine.admit(_call("c")).code is Code.OK
    assert engine.admit(_call("d")).code is Code.INSUFFICIENT_FUNDS
