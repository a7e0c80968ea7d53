"""The escrow shard count as a user sets it: in the ledger URL or as an option, checked, kept per account."""

from __future__ import annotations

import pytest

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.scopes import Level, scope_key
from comptroller.storage.postgres import PostgresStore
from ledger_kit import T0, attribution, reserve_request
from postgres.pg_kit import PG_URL, admin, new_schema


def _shards_by_level(schema: str) -> dict[str, int]:
    """Each account's shard count by budget level (checking the shard rows exist)."""
    with admin() as conn:
        conn.execute(f"SET search_path TO {schema}")
        rows = conn.execute("SELECT b.level, a.shards, (SELECT count(*) FROM account_shards s WHERE s.account_id "
                            "= a.id) FROM accounts a JOIN budgets b ON b.id = a.budget_id").fetchall()
    assert all(shards == rows_made for _, shards, rows_made in rows)  # the count and the shard rows agree
    return {str(level): int(shards) for level, shards, _ in rows}


def test_the_url_sets_the_shard_count_of_new_namespace_and_tenant_accounts_only() -> None:
    """``?escrow_shards=3`` gives new namespace and tenant accounts 3 shards; agent accounts stay rows."""
    schema = new_schema()
    store = PostgresStore(f"{PG_URL}?escrow_shards=3", schema=schema, max_size=2)
    try:
        store.put_budget(Budget(Level.NAMESPACE, scope_key("ns"), 10_000))
        store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 10_000))
        store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 10_000))
        assert store.reserve(reserve_request("k1", 500, who=attribution("a1")), T0).admitted
        assert _shards_by_level(schema) == {"namespace": 3, "tenant": 3, "agent": 0}
    finally:
        store.close()


def test_zero_shards_keeps_every_account_a_single_row() -> None:
    """``escrow_shards=0`` turns the shards off: every reserve locks the account rows, as before."""
    schema = new_schema()
    store = PostgresStore(PG_URL, schema=schema, max_size=2, escrow_shards=0)
    try:
        store.put_budget(Budget(Level.NAMESPACE, scope_key("ns"), 10_000))
        assert store.reserve(reserve_request("k1", 500), T0).admitted
        assert _shards_by_level(schema) == {"namespace": 0}
    finally:
        store.close()


@pytest.mark.parametrize("value", ["2.5", "-1", "257", "many", "nan", "inf"])
def test_a_shard_count_that_is_not_a_whole_number_in_range_is_refused(value: str) -> None:
    """A typo in the shard count fails at start-up with a message naming it, never quietly defaults."""
    new_schema()  # skips when PostgreSQL is unreachable
    with pytest.raises(ValueError, match="escrow_shards"):
        PostgresStore(f"{PG_URL}?escrow_shards={value}", max_size=1)
