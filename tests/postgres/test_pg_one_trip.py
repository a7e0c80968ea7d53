"""The one-round-trip reserve and settle (migration 0008): their plain case, and everything they leave alone.

``ledger_reserve`` and ``ledger_settle`` run a reserve and a settle without a guard as one
statement. Outside their plain case (an alert to fire, a charge past a sharded hold, a lease
due, an unknown reservation) they must write nothing and answer ``general``, so the store's
general path decides exactly as before.
"""

from __future__ import annotations

from datetime import timedelta

from psycopg import sql

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.scopes import Level, scope_key
from comptroller.storage.migrations import LATEST_VERSION, upgrade
from comptroller.storage.postgres import PostgresStore
from ledger_kit import T0, USAGE, account_of, attribution, reserve_request
from postgres.pg_kit import PG_URL, admin, new_schema

_SETTLE = "SELECT status FROM ledger_settle(%s, %s, %s, 1, 1, 0, 0, 0)"


def _store(schema: str, shards: int = 4) -> PostgresStore:
    return PostgresStore(PG_URL, schema=schema, max_size=2, durable=False, escrow_shards=shards)


def _call(schema: str, query: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    with admin() as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        rows: list[tuple[object, ...]] = conn.execute(query, params).fetchall()
        return rows


def test_a_refusal_on_the_one_trip_path_names_the_tightest_level_and_is_logged_once() -> None:
    """With the accounts known, a reserve that does not fit is refused with the rule's numbers and one event."""
    schema = new_schema()
    store = _store(schema)
    try:
        store.put_budget(Budget(Level.NAMESPACE, scope_key("ns"), 1_000))
        store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 5_000))
        assert store.reserve(reserve_request("k1", 300), T0).admitted  # learns the accounts
        ok = store.reserve(reserve_request("k2", 400), T0)
        assert ok.code is Code.OK
        assert ok.remaining_mc == 300
        refused = store.reserve(reserve_request("k3", 400), T0)
        assert refused.code is Code.BUDGET_EXCEEDED
        assert refused.refusal is not None
        assert (refused.refusal.level, refused.refusal.settled_mc, refused.refusal.reserved_mc) == (
            Level.NAMESPACE, 0, 700)
        assert len(store.events("refusal")) == 1
        assert store.reserve(reserve_request("k2", 400), T0).code is Code.ALREADY_RESERVED
    finally:
        store.close()


def test_alerts_crossed_by_settles_fire_once_each() -> None:
    """The one-trip settle leaves a crossing to the general path, which fires each threshold once."""
    schema = new_schema()
    store = _store(schema)
    try:
        budget = Budget(Level.NAMESPACE, scope_key("ns"), 1_000, alert_thresholds_pct=(50, 80))
        store.put_budget(budget)
        codes = []
        for n, cost in enumerate([100, 100, 400, 100, 200]):
            held = store.reserve(reserve_request(f"k{n}", 200), T0)
            assert held.reservation is not None
            result = store.settle(held.reservation.id, USAGE, cost, T0)
            assert result.code is Code.SETTLED
            codes += [e.code for e in result.events]
        assert codes == ["budget_50pct", "budget_80pct"]
        assert [e.code for e in store.events("alert")] == ["budget_50pct", "budget_80pct"]
        assert account_of(store, budget, "ns").settled_mc == 900
    finally:
        store.close()


def test_ledger_settle_writes_nothing_outside_its_plain_case() -> None:
    """Past a sharded hold, after its lease, unknown, or settled already: ``general``, and the money stays."""
    schema = new_schema()
    store = _store(schema)
    try:
        budget = Budget(Level.NAMESPACE, scope_key("ns"), 10_000, alert_thresholds_pct=())
        store.put_budget(budget)
        held = store.reserve(reserve_request("k1", 100, ttl_s=60), T0)
        assert held.reservation is not None
        rid = held.reservation.id
        before = account_of(store, budget, "ns")
        assert _call(schema, _SETTLE, (rid, T0, 101)) == [("general",)]  # past the hold of a sharded account
        assert _call(schema, _SETTLE, (rid, T0 + timedelta(seconds=61), 50)) == [("general",)]  # lease due
        assert _call(schema, _SETTLE, ("nope", T0, 50)) == [("general",)]
        assert account_of(store, budget, "ns") == before
        assert _call(schema, _SETTLE, (rid, T0, 60)) == [("settled",)]
        assert _call(schema, _SETTLE, (rid, T0, 60)) == [("general",)]  # a repeat charges nothing
        after = account_of(store, budget, "ns")
        assert (after.settled_mc, after.reserved_mc) == (60, 0)
        assert store.settle(rid, USAGE, 60, T0).code is Code.ALREADY_SETTLED
        assert [r.cost_mc for r in store.usage_records()] == [60]
    finally:
        store.close()


def test_a_charge_past_a_sharded_hold_is_settled_by_the_general_path_within_the_limit() -> None:
    """A ceiling miss on a sharded account settles (rebalancing its caps), never past what the limit allows."""
    schema = new_schema()
    store = _store(schema)
    try:
        budget = Budget(Level.NAMESPACE, scope_key("ns"), 1_000, alert_thresholds_pct=())
        store.put_budget(budget)
        first = store.reserve(reserve_request("k1", 100), T0)
        second = store.reserve(reserve_request("k2", 100), T0)
        assert first.reservation is not None and second.reservation is not None
        assert store.settle(first.reservation.id, USAGE, 700, T0).code is Code.SETTLED
        view = account_of(store, budget, "ns")
        assert (view.settled_mc, view.reserved_mc) == (700, 100)
        assert store.reserve(reserve_request("k3", 250), T0).code is Code.BUDGET_EXCEEDED
        assert store.reserve(reserve_request("k4", 200), T0).code is Code.OK
    finally:
        store.close()


def test_a_ledger_at_version_7_upgrades_in_place_and_settles_a_hold_made_before() -> None:
    """Migrations 0008 on add functions only: a version-7 ledger with a pending hold on an account row upgrades,
    and the new store settles that hold on the row it names."""
    schema = new_schema()
    with admin() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        upgrade(conn, schema=schema, target=7)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("INSERT INTO budgets VALUES ('b1', 'namespace', 'ns', 'total', 'UTC', 1000, '[]')")
        account = conn.execute("INSERT INTO accounts (budget_id, scope, period_key, reserved_mc) "
                               "VALUES ('b1', 'ns', 'total', 100) RETURNING id").fetchone()
        assert account is not None
        who = attribution()
        conn.execute("INSERT INTO reservations (id, idempotency_key, namespace, tenant, agent, model, ceiling_mc, "
                     "input_tokens_max, output_tokens_max, created_at, expires_at, state, account_ids) VALUES "
                     "('r1', 'k1', %s, %s, %s, 'test-model', 100, 1000, 100, %s, %s, 'pending', %s)",
                     (who.namespace, who.tenant, who.agent, T0, T0 + timedelta(hours=1), [account[0]]))
        assert upgrade(conn, schema=schema) == (7, LATEST_VERSION)
    store = _store(schema)
    try:
        result = store.settle("r1", USAGE, 40, T0)
        assert result.code is Code.SETTLED
        rows = _call(schema, "SELECT settled_mc, reserved_mc FROM accounts WHERE id = %s", (account[0],))
        assert rows == [(40, 0)]
    finally:
        store.close()
