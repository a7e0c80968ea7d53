"""The PostgreSQL ledger's schema: versioned migrations, the start-up check, ``comptroller db upgrade``."""

from __future__ import annotations

import threading

import pytest
from psycopg import sql
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.errors import LedgerUnavailableError
from comptroller.storage import store_from_url
from comptroller.storage.migrations import LATEST_VERSION, SchemaVersionError, current_version, migrations, upgrade
from comptroller.storage.postgres import PostgresStore
from postgres.pg_kit import PG_URL, admin, new_schema, require_postgres


@pytest.fixture
def empty_schema() -> str:
    """A schema with no ledger in it (version 0), dropped afterwards."""
    require_postgres()
    name = new_schema()
    with admin() as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    return name


def _url(schema: str) -> str:
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


def test_migrations_are_numbered_without_gaps() -> None:
    """The shipped migrations run 1..N and the latest version is N."""
    assert [m.version for m in migrations()] == list(range(1, LATEST_VERSION + 1))


def test_upgrade_brings_an_empty_schema_to_the_latest_version_once(empty_schema: str) -> None:
    """A first upgrade applies every migration; a second finds nothing to do."""
    with admin() as conn:
        assert upgrade(conn, schema=empty_schema) == (0, LATEST_VERSION)
        assert upgrade(conn, schema=empty_schema) == (LATEST_VERSION, LATEST_VERSION)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(empty_schema)))
        assert current_version(conn) == LATEST_VERSION
        rows = conn.execute("SELECT version FROM comptroller_schema ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, LATEST_VERSION + 1))


def test_replicas_upgrading_at_once_apply_each_migration_exactly_once(empty_schema: str) -> None:
    """Eight hosts running ``db upgrade`` together: one applies, the others find it done, none fails."""
    results: list[tuple[int, int]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(8, timeout=30)

    def run() -> None:
        try:
            with admin() as conn:
                barrier.wait()
                results.append(upgrade(conn, schema=empty_schema))
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert sorted(results) == [(0, LATEST_VERSION)] + [(LATEST_VERSION, LATEST_VERSION)] * 7


def test_a_store_refuses_a_schema_that_is_behind_and_names_db_upgrade(empty_schema: str) -> None:
    """Start-up on an unmigrated database is one clear error telling the user what to run."""
    with pytest.raises(SchemaVersionError, match=r"version 0.*comptroller db upgrade"):
        PostgresStore(PG_URL, schema=empty_schema, timeout_s=5)


def test_a_store_refuses_a_schema_newer_than_it_knows() -> None:
    """A replica older than the schema does not write to it."""
    schema = new_schema()
    with admin() as conn:
        conn.execute(sql.SQL("INSERT INTO {}.comptroller_schema (version, name) VALUES (%s, 'future')").format(
            sql.Identifier(schema)), (LATEST_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match=f"version {LATEST_VERSION + 1}, newer"):
        PostgresStore(PG_URL, schema=schema, timeout_s=5)


def test_cli_db_upgrade_then_the_url_opens_a_store(empty_schema: str) -> None:
    """``comptroller db upgrade --db URL`` makes ``store_from_url(URL)`` work; a second run says nothing to do."""
    url = _url(empty_schema)
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade", "--db", url])
    assert first.exit_code == 0, first.output
    assert f"from version 0 to {LATEST_VERSION}" in first.output
    second = runner.invoke(app, ["db", "upgrade", "--db", url])
    assert second.exit_code == 0, second.output
    assert "nothing to do" in second.output
    store = store_from_url(url)
    try:
        assert isinstance(store, PostgresStore)
        assert store.budgets() == []
    finally:
        store.close()


def test_cli_db_check_on_a_schema_behind_is_a_usage_error(empty_schema: str) -> None:
    """``db check`` before ``db upgrade`` exits 2 and names the command to run."""
    result = CliRunner().invoke(app, ["db", "check", "--db", _url(empty_schema)])
    assert result.exit_code == 2
    assert "comptroller db upgrade" in " ".join(result.output.split())


def test_an_unreachable_database_fails_within_the_pool_timeout_with_the_cause() -> None:
    """No server on the port: a bounded wait, then an error naming the URL and the refused connection."""
    require_postgres()
    url = PG_URL.replace(":5432", ":1")
    with pytest.raises(LedgerUnavailableError, match=r"127\.0\.0\.1:1/.*unavailable.*refused"):
        PostgresStore(url, timeout_s=0.5, connect_timeout_s=1)
