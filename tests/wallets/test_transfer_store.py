"""The transfer stores (memory, SQLite, PostgreSQL) against a reference model: double entry, applied once."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from transfer_kit import TRANSFER_BACKENDS

from comptroller.domain.wallets.transfers import Transfer, TransferCode
from comptroller.storage.transfers import TransferStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)
ACCOUNTS = ["agent:a", "agent:b", "tenant:t", "provider:m", "platform:revenue"]


def _expected(t: Transfer, model: dict[str, Transfer], floors: dict[str, int],
              balances: dict[str, int], funded: dict[str, int]) -> TransferCode:
    """The code the reference model predicts (written apart from the domain's ``decide``); ``funded``: the
    floor rows' funds by agent account (empty for a store without floor rows)."""
    if t.debit_account == t.credit_account:
        return TransferCode.ACCOUNTS_MUST_BE_DIFFERENT
    if t.amount_mc <= 0:
        return TransferCode.AMOUNT_MUST_BE_POSITIVE
    if t.id in model:
        old = model[t.id]
        same = (old.debit_account, old.credit_account, old.amount_mc, old.kind, old.ref) == (
            t.debit_account, t.credit_account, t.amount_mc, t.kind, t.ref)
        return TransferCode.EXISTS if same else TransferCode.EXISTS_WITH_DIFFERENT_FIELDS
    floor = floors.get(t.debit_account)
    if floor is not None and balances.get(t.debit_account, 0) - t.amount_mc < floor:
        return TransferCode.INSUFFICIENT_FUNDS
    # an agent's floor row (stores with one: SQLite, PostgreSQL) counts what funds it apart from LLM-cost
    # postings (the settle counts those), so a debit may not spend an llm_cost credit
    if floor is not None and t.kind != "llm_cost" and t.debit_account in funded and \
            t.amount_mc > funded[t.debit_account] - floor:
        return TransferCode.INSUFFICIENT_FUNDS
    return TransferCode.OK


def _machine(factory: Callable[[Path], TransferStore], floor_rows: bool) -> type[RuleBasedStateMachine]:
    class Transfers(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.dir = tempfile.TemporaryDirectory()
            self.store = factory(Path(self.dir.name))
            self.model: dict[str, Transfer] = {}
            self.floors: dict[str, int] = {}
            self.balances: dict[str, int] = {}
            self.funded: dict[str, int] = {}  # floor rows: funds apart from llm_cost postings, by agent account
            self.tick = 0

        def _create(self, batch: list[Transfer]) -> None:
            results = self.store.create_transfers(batch)
            assert len(results) == len(batch)
            for t, result in zip(batch, results, strict=True):
                code = _expected(t, self.model, self.floors, self.balances, self.funded)
                assert result.code is code, (t, result)
                if code is TransferCode.OK:
                    self.model[t.id] = t
                    if t.kind != "llm_cost":
                        for account, sign in ((t.debit_account, -1), (t.credit_account, 1)):
                            if account in self.funded:
                                self.funded[account] += sign * t.amount_mc
                    self.balances[t.debit_account] = self.balances.get(t.debit_account, 0) - t.amount_mc
                    self.balances[t.credit_account] = self.balances.get(t.credit_account, 0) + t.amount_mc

        @rule(data=st.data(), size=st.integers(1, 4))
        def create(self, data: st.DataObject, size: int) -> None:
            batch = []
            for _ in range(size):
                self.tick += 1
                batch.append(Transfer(id=f"t{data.draw(st.integers(0, 15))}",
                                      debit_account=data.draw(st.sampled_from(ACCOUNTS)),
                                      credit_account=data.draw(st.sampled_from(ACCOUNTS)),
                                      amount_mc=data.draw(st.integers(-1, 1_000)), kind=data.draw(
                                          st.sampled_from(["fee", "llm_cost"])), ts=T0 + timedelta(seconds=self.tick)))
            self._create(batch)

        @rule(data=st.data())
        def replay(self, data: st.DataObject) -> None:
            if self.model:
                t = self.model[data.draw(st.sampled_from(sorted(self.model)))]
                self._create([replace(t, ts=t.ts + timedelta(days=1))])

        @rule(data=st.data(), change=st.sampled_from(["amount_mc", "kind", "ref", "credit_account"]))
        def retry_changed(self, data: st.DataObject, change: str) -> None:
            if self.model:
                t = self.model[data.draw(st.sampled_from(sorted(self.model)))]
                other = {"amount_mc": t.amount_mc + 1, "kind": t.kind + "x", "ref": t.ref + "x",
                         "credit_account": next(a for a in ACCOUNTS if a not in (t.debit_account, t.credit_account))}
                self._create([replace(t, **{change: other[change]})])

        @rule(account=st.sampled_from(ACCOUNTS), floor_mc=st.none() | st.integers(-500, 0))
        def set_floor(self, account: str, floor_mc: int | None) -> None:
            self.store.set_floor(account, floor_mc)
            if floor_rows and account.startswith("agent:") and account not in self.funded and floor_mc is not None:
                self.funded[account] = self.balances.get(account, 0)  # a new row is funded at the balance
            if floor_mc is None:
                self.floors.pop(account, None)
            else:
                self.floors[account] = floor_mc

        @invariant()
        def double_entry(self) -> None:
            balances = self.store.balances()
            assert sum(a.balance_mc for a in balances) == 0
            assert {a.account: a.balance_mc for a in balances if a.balance_mc} == {
                k: v for k, v in self.balances.items() if v}

        @invariant()
        def each_applied_once(self) -> None:
            stored = self.store.transfers()
            assert len(stored) == len({t.id for t in stored}) == len(self.model)
            for t in stored:
                assert t == self.model[t.id]  # the first time's fields, ts included
            credits: dict[str, int] = {}
            for t in stored:
                credits[t.credit_account] = credits.get(t.credit_account, 0) + t.amount_mc
            assert {a.account: a.credits_mc for a in self.store.balances() if a.credits_mc} == credits

        def teardown(self) -> None:
            self.store.close()
            self.dir.cleanup()

    return Transfers


@pytest.mark.parametrize("backend", list(TRANSFER_BACKENDS))
def test_stateful_double_entry(backend: str) -> None:
    """Balances sum to zero, each transfer id is applied once, a replay is a no-op, on every backend."""
    machine = _machine(TRANSFER_BACKENDS[backend], floor_rows=backend != "memory")  # memory: no ledger, no rows
    examples = 15 if backend == "postgres" else 40
    machine.TestCase.settings = settings(max_examples=examples, stateful_step_count=20, deadline=None)
    machine.TestCase().runTest()


@pytest.mark.parametrize("backend", list(TRANSFER_BACKENDS))
def test_concurrent_same_id_applies_once(backend: str, tmp_path: Path) -> None:
    """Sixteen threads creating the same transfer at once move its money once; the others answer exists."""
    store = TRANSFER_BACKENDS[backend](tmp_path)
    t = Transfer(id="same", debit_account="tenant:t", credit_account="agent:a", amount_mc=70, kind="fee", ts=T0)
    codes: list[TransferCode] = []
    barrier = threading.Barrier(16, timeout=30)

    def go() -> None:
        barrier.wait()
        codes.append(store.create_transfers([t])[0].code)

    threads = [threading.Thread(target=go) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert sorted(codes) == sorted([TransferCode.OK] + [TransferCode.EXISTS] * 15)
    assert store.balance("agent:a").balance_mc == t.amount_mc
    store.close()


@pytest.mark.parametrize("backend", list(TRANSFER_BACKENDS))
def test_floor_refuses_concurrent_overdraft(backend: str, tmp_path: Path) -> None:
    """A prepaid wallet of 10 x 100 mc at floor 0 pays exactly 10 of 24 concurrent 100 mc debits."""
    store = TRANSFER_BACKENDS[backend](tmp_path)
    store.create_transfers([Transfer(id="deposit", debit_account="external:bank", credit_account="agent:a",
                                     amount_mc=1_000, kind="deposit", ts=T0)])
    store.set_floor("agent:a", 0)
    codes: list[TransferCode] = []
    barrier = threading.Barrier(24, timeout=30)

    def go(n: int) -> None:
        barrier.wait()
        codes.append(store.create_transfers([Transfer(id=f"d{n}", debit_account="agent:a", credit_account="agent:b",
                                                      amount_mc=100, kind="knowledge_fee", ts=T0)])[0].code)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(24)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert codes.count(TransferCode.OK) == 1_000 // 100
    assert codes.count(TransferCode.INSUFFICIENT_FUNDS) == 24 - 1_000 // 100
    assert store.balance("agent:a").balance_mc == 0
    store.close()
