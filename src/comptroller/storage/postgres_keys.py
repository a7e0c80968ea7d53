"""Gateway API keys in the PostgreSQL ledger's database, shared by every replica."""

from __future__ import annotations

import json
from datetime import datetime

from comptroller.storage.keys import ApiKey, key_id, match_key
from comptroller.storage.postgres_pool import Database
from comptroller.storage.postgres_rows import KEY_COLS, api_key_of, split_url

__all__ = ["PostgresKeyStore"]


class PostgresKeyStore:
    """Gateway API keys (:class:`~comptroller.storage.keys.KeyStore`) in the ledger database, for every replica.

    Only digests are stored (see :mod:`comptroller.storage.keys`); a key revoked through
    one replica fails verification on every other at its next request.

    Args:
        url: the ledger's libpq URL (pool options as for :class:`~comptroller.storage.postgres.PostgresStore`).
        schema: the schema holding the ledger (default: the server's ``search_path``).
        max_size: pooled connections at most.
        timeout_s: how long a call waits for a free connection, seconds.

    Raises:
        SchemaVersionError: if the schema is behind (run ``comptroller db upgrade``) or ahead.
        LedgerUnavailableError: if the database cannot be reached.
    """

    def __init__(self, url: str, *, schema: str | None = None, max_size: int = 4, timeout_s: float = 5.0) -> None:
        conninfo, options = split_url(url)
        self._db = Database(conninfo, options, schema=schema, min_size=1, max_size=max_size, timeout_s=timeout_s,
                            connect_timeout_s=5.0, lock_timeout_s=10.0, statement_timeout_s=30.0, durable=True)

    def add(self, record: ApiKey) -> None:
        """Store a new key record (from :func:`~comptroller.storage.keys.new_key`)."""
        models = None if record.models is None else json.dumps(list(record.models))
        self._db.write(f"INSERT INTO api_keys ({KEY_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                       "RETURNING id", (record.id, record.digest, record.tenant, record.agent, record.name,
                                        record.admin, models, record.created_at, record.revoked_at))

    def verify(self, plaintext: str) -> ApiKey | None:
        """The active key whose digest matches ``plaintext`` (constant-time compare), or None."""
        found = key_id(plaintext)
        return match_key(self.get(found) if found else None, plaintext)

    def get(self, key_id: str) -> ApiKey | None:
        """One key by id, revoked or not, or None."""
        rows = self._db.read(f"SELECT {KEY_COLS} FROM api_keys WHERE id = %s", (key_id,))
        return api_key_of(rows[0]) if rows else None

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of one tenant if given), oldest first."""
        rows = self._db.read(f"SELECT {KEY_COLS} FROM api_keys WHERE %s::text IS NULL OR tenant = %s "
                             "ORDER BY created_at, id", (tenant, tenant))
        return [api_key_of(r) for r in rows]

    def revoke(self, key_id: str, now: datetime) -> bool:
        """Revoke a key; False if no such key. Revoking twice keeps the first time."""
        rows = self._db.write("WITH revoked AS (UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at "
                              "IS NULL) SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = %s)", (now, key_id, key_id))
        return bool(rows[0][0])

    def close(self) -> None:
        """Close the pooled connections."""
        self._db.close()
