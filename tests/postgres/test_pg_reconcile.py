"""Reconciliation on PostgreSQL: a busy ledger checks clean; a corrupted row is found and named."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from psycopg import sql
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.budgets import Budget, Period
from comptroller.domain.reconcile import Difference, reconcile
from comptroller.domain.scopes import Level
from comptroller.storage.postgres import PostgresStore
from ledger_kit import T0, USAGE, attribution, reserve_request
from postgres.pg_kit import PG_URL, admin, postgres_store

WHO = [attribution(f"a{i}", tenant=f"t{i % 2}", conversation="room") for i in range(4)]


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    """A ledger with settles (on time and late), a release, an expiry and open reservations."""
    s = postgres_store()
    s.put_budget(Budget(Level.NAMESPACE, "ns", 10**9))
    s.put_budget(Budget(Level.TENANT, "*", 10**8, period=Period.DAY))
    s.put_budget(Budget(Level.CONVERSATION, "*", 10**8))
    for i in range(24):
        who = WHO[i % len(WHO)]
        held = s.reserve(reserve_request(f"k{i}", 1_000 + i, who=who, ttl_s=30 if i % 6 == 5 else 600), T0).reservation
        assert held is not None
        if i % 3 == 0:
            s.settle(held.id, USAGE, 500 + i, T0 + timedelta(seconds=1))
        elif i % 6 == 1:
            s.release(held.id, T0 + timedelta(seconds=1))
    s.expire(T0 + timedelta(seconds=60))
    late = s.reserve(reserve_request("late", 700, ttl_s=5), T0)
    assert late.reservation is not None
    s.settle(late.reservation.id, USAGE, 900, T0 + timedelta(seconds=90))  # settled_late after the sweep
    yield s
    s.close()


def _execute(store: PostgresStore, statement: str) -> None:
    with admin() as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(store.where.split("(schema ")[1][:-1])))
        conn.execute(statement)


def _url(store: PostgresStore) -> str:
    return f"{PG_URL}?options=-csearch_path%3D{store.where.split('(schema ')[1][:-1]}"


def test_a_busy_ledger_reconciles_with_no_difference(store: PostgresStore) -> None:
    """Settles, late settles, releases, expiries and open holds: balances equal the facts."""
    snapshot = store.ledger_snapshot()
    assert {h.state for h in snapshot.holds} == {"settled", "released", "expired", "pending"}
    assert reconcile(snapshot) == []


def test_a_corrupted_settled_balance_is_reported_on_its_account(store: PostgresStore) -> None:
    """Adding 7 mc to one account's settled money is one difference naming that account and both sums."""
    before = {b.account: b for b in store.ledger_snapshot().balances}
    victim = min(before)
    _execute(store, f"UPDATE accounts SET settled_mc = settled_mc + 7 WHERE budget_id = '{victim.budget_id}' "
                    f"AND scope = '{victim.scope}' AND period_key = '{victim.period_key}'")
    differences = reconcile(store.ledger_snapshot())
    expected = before[victim].settled_mc
    assert differences == [Difference("settled", f"account {victim}", expected, expected + 7)]


def test_a_lost_usage_row_is_reported_on_the_reservation_and_every_account_it_charged(store: PostgresStore) -> None:
    """Deleting one usage row: its reservation has no usage row and each of its accounts is over by its cost."""
    snapshot = store.ledger_snapshot()
    charge = snapshot.charges[0]
    hold = next(h for h in snapshot.holds if h.reservation_id == charge.reservation_id)
    _execute(store, f"DELETE FROM usage_log WHERE reservation_id = '{charge.reservation_id}'")
    differences = reconcile(store.ledger_snapshot())
    balances = {b.account: b.settled_mc for b in snapshot.balances}
    expected = [Difference("settled", f"account {a}", balances[a] - charge.cost_mc, balances[a])
                for a in sorted(hold.accounts)]
    assert [d for d in differences if d.kind == "settled"] == expected
    assert [d for d in differences if d.kind != "settled"] == [
        Difference("missing_usage", f"reservation {charge.reservation_id}", 1, 0)]


def test_a_reserved_balance_that_leaks_is_reported(store: PostgresStore) -> None:
    """A hold returned twice (reserved money too low) is found against the open reservations."""
    snapshot = store.ledger_snapshot()
    pending = next(h for h in snapshot.holds if h.state == "pending")
    account = pending.accounts[0]
    reserved = next(b.reserved_mc for b in snapshot.balances if b.account == account)
    _execute(store, f"UPDATE accounts SET reserved_mc = reserved_mc - {pending.ceiling_mc} WHERE budget_id = "
                    f"'{account.budget_id}' AND scope = '{account.scope}' AND period_key = '{account.period_key}'")
    assert reconcile(store.ledger_snapshot()) == [
        Difference("reserved", f"account {account}", reserved, reserved - pending.ceiling_mc)]


def test_cli_db_check_passes_a_clean_ledger_and_fails_a_corrupted_one(store: PostgresStore) -> None:
    """``comptroller db check`` exits 0 on a clean ledger, then 1 naming the corrupted account."""
    runner = CliRunner()
    clean = runner.invoke(app, ["db", "check", "--db", _url(store)])
    assert clean.exit_code == 0, clean.output
    assert "ledger consistent" in clean.output
    victim = min(b.account for b in store.ledger_snapshot().balances)
    _execute(store, f"UPDATE accounts SET settled_mc = settled_mc + 12345 WHERE budget_id = '{victim.budget_id}' "
                    f"AND scope = '{victim.scope}' AND period_key = '{victim.period_key}'")
    corrupted = runner.invoke(app, ["db", "check", "--db", _url(store)])
    assert corrupted.exit_code == 1, corrupted.output
    text = " ".join(corrupted.output.split())
    assert "1 difference" in text
    assert victim.budget_id in text
