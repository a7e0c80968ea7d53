"""Gateway API keys, stored only as hashes, beside the ledger.

A key is ``ck-<id>.<secret>``: a public 12-hex-digit id, to find the row, and a
256-bit random secret (:func:`secrets.token_urlsafe`). The store keeps the id and
the SHA-256 of the whole key, never the key itself; verification compares digests
with :func:`hmac.compare_digest` (constant time). A fast hash is the right tool
here: the secret has 256 bits of entropy, so there is nothing for a slow password
hash to protect (OWASP "Password Storage Cheat Sheet" concerns low-entropy secrets).

A deployment that keeps its keys as code provisions a known key with :func:`imported_key`
and :func:`provision` (``comptroller key create --secret-env VAR``, ``comptroller key import``):
the whole key is checked (:func:`key_format_problem`), and its secret must carry at least
192 bits (32 URL-safe base64 characters). Provisioning the same key again is a no-op.

A key is bound to a tenant and optionally an agent (the gateway narrows attribution
within that scope, never widens it), may list the models it may call, and may be
an admin key (the admin API). Revoking is final.

Backends behind :class:`KeyStore`: :class:`MemoryKeyStore` (tests, ``memory://``),
:class:`SQLiteKeyStore` (a table ``api_keys`` in the ledger's own SQLite file) and
:class:`comptroller.storage.postgres.PostgresKeyStore` (the ledger's PostgreSQL database).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "ApiKey",
    "ApiKeyError",
    "KeyStore",
    "MemoryKeyStore",
    "SQLiteKeyStore",
    "hash_key",
    "imported_key",
    "key_format_problem",
    "key_id",
    "match_key",
    "new_key",
    "provision",
]

_KEY = re.compile(r"^ck-([0-9a-f]{12})\.([A-Za-z0-9_-]{20,100})$")
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]+$")
_IMPORTED_SECRET_CHARS = range(32, 101)  # 32 base64url characters carry 192 bits; 100: the format's limit


class ApiKeyError(ValueError):
    """An API key operation got bad input: an unknown id, an empty tenant."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key (never the secret).

    Attributes:
        id: the public id (the ``<id>`` in ``ck-<id>.<secret>``).
        tenant: the tenant every call with this key is attributed to.
        agent: the agent the key is bound to, or None (the caller may name one).
        name: a label for people.
        admin: True for an admin key (the admin API; no chat calls).
        models: the models this key may call, or None for every configured model.
        created_at: when it was made (aware UTC).
        revoked_at: when it was revoked, or None.
        digest: hex SHA-256 of the whole key.
    """

    id: str
    tenant: str
    agent: str | None
    name: str
    admin: bool
    models: tuple[str, ...] | None
    created_at: datetime
    revoked_at: datetime | None
    digest: str

    @property
    def active(self) -> bool:
        """True until revoked."""
        return self.revoked_at is None


def hash_key(plaintext: str) -> str:
    """Hex SHA-256 of a key's UTF-8 bytes."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def new_key(*, tenant: str, agent: str | None = None, name: str = "", admin: bool = False,
            models: tuple[str, ...] | None = None, now: datetime | None = None) -> tuple[ApiKey, str]:
    """A fresh key record and its plaintext (shown once, never stored).

    Raises:
        ApiKeyError: for an empty tenant or agent, or an empty model list.
    """
    if not tenant.strip():
        raise ApiKeyError("a key needs a tenant: pass --tenant NAME")
    if agent is not None and not agent.strip():
        raise ApiKeyError("agent must be a non-empty name, or left out for a key of the whole tenant")
    if models is not None and not models:
        raise ApiKeyError("models must name at least one model, or be left out for every configured model")
    key_id = secrets.token_hex(6)
    plaintext = f"ck-{key_id}.{secrets.token_urlsafe(32)}"
    record = ApiKey(id=key_id, tenant=tenant, agent=agent, name=name, admin=admin, models=models,
                    created_at=now or datetime.now(UTC), revoked_at=None, digest=hash_key(plaintext))
    return record, plaintext


def key_format_problem(plaintext: str) -> str | None:
    """What is wrong with a key to import, or None when it is well formed.

    A key is ``ck-<id>.<secret>``: ``<id>`` 12 lowercase hex digits, ``<secret>`` 32 to 100
    URL-safe base64 characters (``A-Z a-z 0-9 - _``), so it carries at least 192 bits.
    The message never repeats the secret.
    """
    shape = "a key is ck-<12 lowercase hex digits>.<32 to 100 characters of A-Z a-z 0-9 - _>"
    problem = None
    key_id, dot, secret = plaintext[3:].partition(".")
    if not plaintext:
        problem = "the key is empty"
    elif plaintext != plaintext.strip():
        problem = "the key has leading or trailing whitespace"
    elif not plaintext.startswith("ck-"):
        problem = "the key does not start with 'ck-'"
    elif not dot:
        problem = "the key has no '.' between its id and its secret"
    elif not _KEY_ID.match(key_id):
        problem = f"the key's id {key_id!r} is not 12 lowercase hex digits"
    elif not _SECRET.match(secret):
        problem = "the key's secret has characters outside A-Z a-z 0-9 - _"
    elif len(secret) not in _IMPORTED_SECRET_CHARS:
        problem = (f"the key's secret has {len(secret)} characters, not 32 to 100 (at least 192 bits); make one with "
                   "python -c 'import secrets; print(f\"ck-{secrets.token_hex(6)}.{secrets.token_urlsafe(32)}\")'")
    return None if problem is None else f"{problem}; {shape}"


def imported_key(plaintext: str, *, tenant: str, agent: str | None = None, name: str = "", admin: bool = False,
                 models: tuple[str, ...] | None = None, now: datetime | None = None) -> ApiKey:
    """The record of a known key a deployment provisions (its plaintext is not stored).

    Raises:
        ApiKeyError: naming what is wrong with the key (:func:`key_format_problem`), or with
            the tenant, agent or models (as :func:`new_key`).
    """
    problem = key_format_problem(plaintext)
    if problem is not None:
        raise ApiKeyError(problem)
    record, _ = new_key(tenant=tenant, agent=agent, name=name, admin=admin, models=models, now=now)
    return replace(record, id=plaintext[3:15], digest=hash_key(plaintext))


def provision(store: KeyStore, record: ApiKey) -> bool:
    """Store an imported key; True if added, False if that very key was already there.

    Provisioning is repeatable (a deployment applies it on every rollout): the same key for
    the same tenant, agent, admin flag and models is a no-op.

    Raises:
        ApiKeyError: when the id is taken by another key, or by this key with another scope,
            or this key was revoked (revoking is final: provision a new key).
    """
    existing = store.get(record.id)
    if existing is None:
        store.add(record)
        return True
    if not hmac.compare_digest(existing.digest, record.digest):
        raise ApiKeyError(f"another key already has the id {record.id}; give this key another id")
    if not existing.active:
        raise ApiKeyError(f"key {record.id} was revoked, and revoking is final; provision a new key")
    if (existing.tenant, existing.agent, existing.admin, existing.models) != (
            record.tenant, record.agent, record.admin, record.models):
        raise ApiKeyError(f"key {record.id} exists for tenant {existing.tenant!r}, agent {existing.agent!r}, "
                          f"admin {existing.admin}, models {existing.models}; revoke it and provision a new key "
                          "to change its scope")
    return False


def match_key(record: ApiKey | None, plaintext: str) -> ApiKey | None:
    """``record`` if ``plaintext`` is its key and it is active, else None (constant-time compare).

    Args:
        record: the stored key whose id ``plaintext`` names (:func:`key_id`), or None if no such id.
        plaintext: the key as the client sent it.

    The digest is computed even when ``record`` is None, so an unknown id takes the same time.
    """
    digest = hash_key(plaintext)
    if record is None:
        hmac.compare_digest(digest, digest)  # the same work whether or not the id exists
        return None
    if not hmac.compare_digest(record.digest, digest) or not record.active:
        return None
    return record


def key_id(plaintext: str) -> str | None:
    """The id part of a ``ck-...`` key (what a store looks it up by), or None if it is not of that form."""
    found = _KEY.match(plaintext)
    return found.group(1) if found else None


@runtime_checkable
class KeyStore(Protocol):
    """Where API keys live. Every method is safe across threads."""

    def add(self, record: ApiKey) -> None:
        """Store a new key record (from :func:`new_key`)."""
        ...

    def verify(self, plaintext: str) -> ApiKey | None:
        """The active key whose digest matches ``plaintext`` (constant-time compare), or None."""
        ...

    def get(self, key_id: str) -> ApiKey | None:
        """One key by id, revoked or not, or None."""
        ...

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of one tenant if given), oldest first."""
        ...

    def revoke(self, key_id: str, now: datetime) -> bool:
        """Revoke a key; False if no such key. Revoking twice keeps the first time."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class MemoryKeyStore:
    """Keys in a dict: for tests and the ``memory://`` ledger."""

    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}
        self._lock = threading.Lock()

    def add(self, record: ApiKey) -> None:
        """Store a new key record."""
        with self._lock:
            self._keys[record.id] = record

    def verify(self, plaintext: str) -> ApiKey | None:
        """The active key matching ``plaintext``, or None."""
        found = key_id(plaintext)
        return match_key(self._keys.get(found) if found else None, plaintext)

    def get(self, key_id: str) -> ApiKey | None:
        """One key by id, or None."""
        return self._keys.get(key_id)

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of one tenant if given), oldest first."""
        with self._lock:
            keys = list(self._keys.values())
        return sorted((k for k in keys if tenant is None or k.tenant == tenant), key=lambda k: k.created_at)

    def revoke(self, key_id: str, now: datetime) -> bool:
        """Revoke a key; False if unknown."""
        with self._lock:
            record = self._keys.get(key_id)
            if record is None:
                return False
            if record.active:
                self._keys[key_id] = replace(record, revoked_at=now)
            return True

    def close(self) -> None:
        """Nothing to release."""


_SCHEMA = """CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, digest TEXT NOT NULL, tenant TEXT NOT NULL, agent TEXT, name TEXT NOT NULL,
    admin INTEGER NOT NULL, models TEXT, created_at REAL NOT NULL, revoked_at REAL)"""
_COLS = "id, digest, tenant, agent, name, admin, models, created_at, revoked_at"


def _row(row: tuple[object, ...]) -> ApiKey:
    key_id, digest, tenant, agent, name, admin, models, created_at, revoked_at = row
    return ApiKey(id=str(key_id), digest=str(digest), tenant=str(tenant),
                  agent=None if agent is None else str(agent), name=str(name), admin=bool(admin),
                  models=None if models is None else tuple(json.loads(str(models))),
                  created_at=datetime.fromtimestamp(float(str(created_at)), UTC),
                  revoked_at=None if revoked_at is None else datetime.fromtimestamp(float(str(revoked_at)), UTC))


class SQLiteKeyStore:
    """Keys in the table ``api_keys`` of a SQLite file (the ledger's own file by default).

    Its own connection, in autocommit mode (each statement is one transaction), WAL like
    the ledger, so gateway workers in several processes see a new or revoked key at once.

    Raises:
        sqlite3.OperationalError: if the file cannot be opened.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout_s)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._conn.execute(_SCHEMA)

    def add(self, record: ApiKey) -> None:
        """Store a new key record."""
        models = None if record.models is None else json.dumps(list(record.models))
        revoked = None if record.revoked_at is None else record.revoked_at.timestamp()
        with self._lock:
            self._conn.execute(f"INSERT INTO api_keys ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (record.id, record.digest, record.tenant, record.agent, record.name,
                                int(record.admin), models, record.created_at.timestamp(), revoked))

    def verify(self, plaintext: str) -> ApiKey | None:
        """The active key matching ``plaintext``, or None."""
        found = key_id(plaintext)
        return match_key(self.get(found) if found else None, plaintext)

    def get(self, key_id: str) -> ApiKey | None:
        """One key by id, or None."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return None if row is None else _row(row)

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of one tenant if given), oldest first."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLS} FROM api_keys WHERE ? IS NULL OR tenant = ? "
                                      "ORDER BY created_at, id", (tenant, tenant)).fetchall()
        return [_row(r) for r in rows]

    def revoke(self, key_id: str, now: datetime) -> bool:
        """Revoke a key; False if unknown."""
        with self._lock:
            self._conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                               (now.timestamp(), key_id))
            found = self._conn.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return found is not None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
