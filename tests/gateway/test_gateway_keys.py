"""API key storage: only hashes at rest, exact verification, revocation, on every backend."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from comptroller.storage.keys import ApiKeyError, KeyStore, MemoryKeyStore, SQLiteKeyStore, hash_key, new_key

BACKENDS: dict[str, Callable[[Path], KeyStore]] = {
    "memory": lambda _: MemoryKeyStore(),
    "sqlite": lambda tmp: SQLiteKeyStore(tmp / "ledger.db"),
}


@pytest.fixture(params=sorted(BACKENDS))
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> KeyStore:
    """A key store of each backend."""
    return BACKENDS[request.param](tmp_path)


def test_a_key_verifies_and_near_misses_do_not(keys: KeyStore) -> None:
    """The exact key verifies; the same id with another secret, a malformed key or an empty one do not."""
    record, plaintext = new_key(tenant="acme", agent="writer", models=("gpt-4o-mini",))
    keys.add(record)
    found = keys.verify(plaintext)
    assert found is not None
    assert (found.tenant, found.agent, found.models) == ("acme", "writer", ("gpt-4o-mini",))
    key_id = plaintext.split(".")[0]
    assert keys.verify(f"{key_id}.{'A' * 43}") is None
    assert keys.verify(plaintext + "x") is None
    assert keys.verify(plaintext.replace("ck-", "ak-")) is None
    assert keys.verify("") is None


def test_revoked_keys_stop_verifying_and_revoking_twice_keeps_the_first_time(keys: KeyStore) -> None:
    """Revoking is final and idempotent; an unknown id answers False."""
    record, plaintext = new_key(tenant="acme")
    keys.add(record)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    assert keys.revoke(record.id, first)
    assert keys.revoke(record.id, datetime(2026, 2, 1, tzinfo=UTC))
    assert keys.verify(plaintext) is None
    stored = keys.get(record.id)
    assert stored is not None
    assert stored.revoked_at == first
    assert not keys.revoke("000000000000", first)


def test_keys_are_listed_per_tenant(keys: KeyStore) -> None:
    """Listing by tenant shows that tenant's keys only."""
    for tenant in ("acme", "globex", "acme"):
        keys.add(new_key(tenant=tenant)[0])
    assert [k.tenant for k in keys.keys("acme")] == ["acme", "acme"]
    assert len(keys.keys()) == 3


def test_sqlite_stores_only_the_hash(tmp_path: Path) -> None:
    """The key's secret never reaches the database file; its SHA-256 does."""
    store = SQLiteKeyStore(tmp_path / "ledger.db")
    record, plaintext = new_key(tenant="acme")
    store.add(record)
    store.close()
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
    dumped = repr(rows)
    assert plaintext.split(".")[1] not in dumped
    assert hash_key(plaintext) in dumped


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"tenant": " "}, "tenant"),
    ({"tenant": "acme", "agent": ""}, "agent"),
    ({"tenant": "acme", "models": ()}, "models"),
])
def test_bad_key_requests_name_the_field(kwargs: dict[str, object], fragment: str) -> None:
    """An empty tenant, agent or model list is refused with a message naming it."""
    with pytest.raises(ApiKeyError, match=fragment):
        new_key(**kwargs)  # type: ignore[arg-type]
