"""Gateway API keys in the PostgreSQL ledger, shared by replicas; upgrading a version-1 schema adds them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from psycopg import sql

from comptroller.domain.budgets import Budget
from comptroller.domain.scopes import Level
from comptroller.storage.keys import KeyStore, new_key
from comptroller.storage.migrations import LATEST_VERSION, SchemaVersionError, upgrade
from comptroller.storage.postgres import PostgresKeyStore, PostgresStore
from ledger_kit import T0
from postgres.pg_kit import PG_URL, admin, new_schema


@pytest.fixture
def replicas() -> Iterator[tuple[PostgresKeyStore, PostgresKeyStore]]:
    """Two key stores (two replicas) on one fresh ledger schema."""
    schema = new_schema()
    a, b = PostgresKeyStore(PG_URL, schema=schema), PostgresKeyStore(PG_URL, schema=schema)
    yield a, b
    a.close()
    b.close()


def test_the_postgres_key_store_keeps_the_key_store_protocol(replicas: tuple[PostgresKeyStore, ...]) -> None:
    """It is a KeyStore (runtime-checkable protocol)."""
    assert isinstance(replicas[0], KeyStore)


def test_a_key_made_on_one_replica_verifies_on_another_and_a_revocation_reaches_both(
        replicas: tuple[PostgresKeyStore, PostgresKeyStore]) -> None:
    """Create on A, verify on B; a wrong secret fails; revoke on B, then A refuses it and keeps the first time."""
    a, b = replicas
    record, plaintext = new_key(tenant="acme", agent="writer", name="ci", models=("gpt-4o-mini",), now=T0)
    a.add(record)
    assert b.verify(plaintext) == record
    assert b.verify(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    other, _ = new_key(tenant="globex", now=T0 + timedelta(seconds=1))
    b.add(other)
    assert [k.id for k in a.keys(None)] == [record.id, other.id]
    assert a.keys("acme") == [record]
    assert b.revoke(record.id, T0 + timedelta(minutes=1))
    assert a.verify(plaintext) is None
    assert a.revoke(record.id, T0 + timedelta(minutes=2))
    revoked = a.get(record.id)
    assert revoked is not None
    assert revoked.revoked_at == T0 + timedelta(minutes=1)
    assert not a.revoke("000000000000", T0)


def test_a_version_1_ledger_is_refused_then_upgraded_with_its_data_kept() -> None:
    """A schema at version 1 (no api_keys): the store names db upgrade; after upgrading, budgets are intact."""
    schema = new_schema()
    with admin() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        assert upgrade(conn, schema=schema, target=1) == (0, 1)
    with pytest.raises(SchemaVersionError, match=f"version 1, this comptroller needs version {LATEST_VERSION}"):
        PostgresStore(PG_URL, schema=schema)
    with admin() as conn:
        conn.execute(sql.SQL("INSERT INTO {}.budgets VALUES ('namespace:total:ns', 'namespace', 'ns', 'total', "
                             "'UTC', 5000, '[50, 100]')").format(sql.Identifier(schema)))
        assert upgrade(conn, schema=schema) == (1, LATEST_VERSION)
    store = PostgresStore(PG_URL, schema=schema)
    try:
        assert store.budgets() == [Budget(Level.NAMESPACE, "ns", 5000, alert_thresholds_pct=(50, 100))]
    finally:
        store.close()
