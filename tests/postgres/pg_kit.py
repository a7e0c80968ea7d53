"""PostgreSQL for tests: the server at 127.0.0.1:5432 (or ``COMPTROLLER_TEST_PG_URL``), one fresh schema per store.

Every test that needs PostgreSQL calls :func:`require_postgres` (directly or through
:func:`postgres_store`), which skips it with the reason when the server does not
answer within a few seconds, so nothing hangs where PostgreSQL is absent (CI starts it
in ``.ci/run``). Schemas are named ``ct_<pid>_<n>`` and dropped when the test process
exits; schemas left by a process that died are dropped by the next one.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
from functools import cache
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from comptroller.storage.migrations import upgrade
from comptroller.storage.postgres import PostgresStore

__all__ = ["PG_URL", "admin", "new_schema", "postgres_store", "require_postgres"]

PG_URL = os.environ.get("COMPTROLLER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The test server (trust auth on loopback, database ``test``)."""

_CONNECT_TIMEOUT_S = 3
_SCHEMA = re.compile(r"^ct_(\d+)_\d+$")
_counter = itertools.count()
_made: list[str] = []


def admin() -> psycopg.Connection[tuple[object, ...]]:
    """A plain autocommit connection to the test database (short connect timeout)."""
    return psycopg.connect(PG_URL, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)


@cache
def _unreachable() -> str | None:
    try:
        with admin() as conn:
            conn.execute("SELECT 1")
            _drop_orphans(conn)
    except psycopg.Error as exc:
        cause = str(exc).strip().splitlines()[0]
        return f"PostgreSQL at {PG_URL} is unreachable ({cause}); start it to run these tests"
    atexit.register(_drop_made)
    return None


def require_postgres() -> None:
    """Skip the calling test, with the reason, unless the test server answers."""
    reason = _unreachable()
    if reason is not None:
        pytest.skip(reason)


def new_schema() -> str:
    """Create a fresh schema at the latest ledger version; its name."""
    require_postgres()
    name = f"ct_{os.getpid()}_{next(_counter)}"
    with admin() as conn:
        conn.execute("SET synchronous_commit TO off")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        upgrade(conn, schema=name)
    _made.append(name)
    return name


def postgres_store(directory: Path | None = None, **options: float) -> PostgresStore:
    """A store on a fresh schema (``directory`` is unused: the ``BACKENDS`` factory shape)."""
    del directory
    durable = bool(options.pop("durable", False))  # contract tests check logic, not fsync
    return PostgresStore(PG_URL, schema=new_schema(), min_size=1, max_size=int(options.pop("max_size", 4)),
                         durable=durable, **options)


def _drop_made() -> None:
    try:
        with admin() as conn:
            for name in _made:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    except psycopg.Error:
        pass  # the server went away; the next test run drops what is left


def _drop_orphans(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Drop schemas of test processes that are gone."""
    rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ct\\_%'").fetchall()
    for (name,) in rows:
        match = _SCHEMA.match(str(name))
        if match and not Path(f"/proc/{match.group(1)}").exists():
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(str(name))))
