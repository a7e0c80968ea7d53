"""Versioned schema migrations of the PostgreSQL ledger, applied by ``comptroller db upgrade``.

Each migration is one file ``NNNN_name.sql`` beside this module, numbered from 1 with
no gaps. The table ``comptroller_schema`` (one row per applied migration) records the
version; :func:`upgrade` applies every missing migration in one transaction (PostgreSQL
DDL is transactional, so an upgrade applies all of them or none) under an advisory lock,
so replicas upgrading at once apply each migration exactly once. A store checks the
version when it opens (:func:`check_version`) and refuses a schema that is behind or ahead.

To change the schema, add the next numbered file; never edit an applied one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import psycopg
from psycopg import sql

__all__ = [
    "LATEST_VERSION",
    "Migration",
    "SchemaVersionError",
    "check_version",
    "current_version",
    "migrations",
    "upgrade",
]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x636F6D70  # "comp": the advisory lock every upgrade of any schema takes
_VERSION_TABLE = "comptroller_schema"


class SchemaVersionError(RuntimeError):
    """The ledger's schema is not the version this comptroller needs (run ``comptroller db upgrade``)."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: its ``version`` (1, 2, ...), ``name`` and SQL text."""

    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with this comptroller, by version.

    Raises:
        RuntimeError: if the files are misnamed or their numbers have a gap (a packaging bug).
    """
    found: list[Migration] = []
    for entry in resources.files(__package__).iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"ledger migrations must be numbered 1..N without gaps, found {[m.version for m in found]}")
    return tuple(found)


LATEST_VERSION = len(migrations())
"""The schema version this comptroller reads and writes."""


def current_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The schema version in the connection's ``search_path`` (0: no ledger schema yet)."""
    row = conn.execute("SELECT to_regclass(%s)", (_VERSION_TABLE,)).fetchone()
    if row is None or row[0] is None:
        return 0
    version = conn.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(
        sql.Identifier(_VERSION_TABLE))).fetchone()
    return int(str(version[0])) if version is not None else 0


def check_version(conn: psycopg.Connection[tuple[object, ...]], where: str) -> None:
    """Raise :class:`SchemaVersionError` unless the schema is at :data:`LATEST_VERSION`.

    Args:
        conn: a connection whose ``search_path`` names the ledger schema.
        where: the ledger as people know it (a URL without password), for the message.
    """
    version = current_version(conn)
    if version < LATEST_VERSION:
        raise SchemaVersionError(
            f"the ledger schema at {where} is at version {version}, this comptroller needs version "
            f"{LATEST_VERSION}: run `comptroller db upgrade --db URL` once, then start again")
    if version > LATEST_VERSION:
        raise SchemaVersionError(
            f"the ledger schema at {where} is at version {version}, newer than this comptroller knows "
            f"({LATEST_VERSION}): upgrade comptroller on this host to the version the other replicas run")


def upgrade(conn: psycopg.Connection[tuple[object, ...]], *, schema: str | None = None,
            target: int = LATEST_VERSION) -> tuple[int, int]:
    """Apply every missing migration up to ``target`` in one transaction; safe to run from many hosts at once.

    Args:
        conn: an open connection (autocommit or not; it is left committed).
        schema: create this schema and migrate inside it (default: the first schema of
            the connection's ``search_path``).
        target: the version to reach (default: the latest; lower values are for tests of
            upgrades from an older schema).

    Returns:
        ``(version before, version after)``.

    Raises:
        SchemaVersionError: if the schema is newer than this comptroller.
        ValueError: if ``target`` is not a version this comptroller ships.
        psycopg.Error: if a migration fails (nothing is applied then).
    """
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"target must be a schema version in 0..{LATEST_VERSION}, got {target}")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        if schema is not None:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        before = current_version(conn)
        if before > LATEST_VERSION:
            raise SchemaVersionError(
                f"the ledger schema is at version {before}, newer than this comptroller knows ({LATEST_VERSION})")
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL, "
                             "applied_at timestamptz NOT NULL DEFAULT now())").format(sql.Identifier(_VERSION_TABLE)))
        for migration in migrations()[before:target]:
            conn.execute(migration.sql.encode("utf-8"))
            conn.execute(sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(
                sql.Identifier(_VERSION_TABLE)), (migration.version, migration.name))
    return before, max(before, target)
