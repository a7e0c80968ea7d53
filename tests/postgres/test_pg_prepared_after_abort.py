"""A statement psycopg prepared inside a pipeline that an earlier error aborted is usable after ``rollback``.

psycopg 3 (3.3.9 here) records a statement as prepared when it queues the ``Parse`` on the
statement's sixth use (after ``prepare_threshold`` uses) in pipeline mode, before the server has answered;
if an earlier statement of the pipeline fails, the server skips that ``Parse`` and the name
never exists. psycopg forgets its names when a ``ROLLBACK`` goes through ``Connection.rollback()``, but
a ``ROLLBACK`` statement sent with ``execute`` stops doing so once psycopg has prepared that
statement itself, so the store's :func:`~comptroller.storage.postgres_rows.rollback` goes
through ``Connection.rollback()``, or the next use of the statement fails with ``prepared statement "_pg3_N" does
not exist`` (seen in the 4-process escrow race with churn).
"""

from __future__ import annotations

import psycopg
import pytest
from tests.postgres.pg_kit import PG_URL, require_postgres

from comptroller.storage.postgres_rows import rollback

THRESHOLD = 5  # psycopg's default prepare_threshold: a statement is prepared on its use after this many


def _abort_a_pipeline_while_preparing(conn: psycopg.Connection[tuple[object, ...]], query: str) -> None:
    """Use ``query`` until its next use prepares it, then send that use after a failing statement."""
    for _ in range(THRESHOLD):  # every statement below is used THRESHOLD times: its next use prepares it
        conn.execute("BEGIN")
        conn.execute(query)
        rollback(conn)
    with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
        conn.execute("BEGIN")
        conn.execute("SELECT 1 / 0")
        conn.execute(query)  # this use prepares it: psycopg queues the Parse, which the server skips


def _status(conn: psycopg.Connection[tuple[object, ...]]) -> psycopg.pq.TransactionStatus:
    return conn.info.transaction_status


def test_a_statement_prepared_in_an_aborted_pipeline_runs_after_rollback() -> None:
    require_postgres()
    query = "SELECT 41 + 1"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        _abort_a_pipeline_while_preparing(conn, query)
        assert _status(conn) is psycopg.pq.TransactionStatus.INERROR
        rollback(conn)
        assert _status(conn) is psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(query).fetchone() == (42,)  # failed before: prepared statement does not exist
        for _ in range(THRESHOLD + 1):  # and it is prepared again and reused
            assert conn.execute(query).fetchone() == (42,)

