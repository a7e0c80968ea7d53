"""Connections to the PostgreSQL ledger: the pool, its session settings, and the loop every operation runs in.

An operation is a function of a pooled connection (autocommit; it opens its own
transaction) and an :class:`Attempt`. :meth:`Database.run` runs it again after a
conflict (:class:`RetryError`, a unique violation, a serialization failure, a deadlock)
and turns every connection problem into :class:`LedgerUnavailableError`, so a call
fails closed and is never admitted unmetered. An operation that failed before it sent
``COMMIT`` (or its one autocommit write) wrote nothing and is retried on a fresh
connection (this heals stale pooled connections after a restart); one that failed
after may or may not have committed, and says so (``outcome_unknown``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import errors, sql
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from comptroller.errors import LedgerUnavailableError
from comptroller.storage.migrations import check_version
from comptroller.storage.postgres_rows import Conn, redact, rollback, why_not

__all__ = ["Attempt", "Database", "RetryError"]

_T = TypeVar("_T")

_ATTEMPTS = 12
# psycopg_pool retries a lost connection after 1 s, doubling without a cap, so after an outage the
# first new connection could come many seconds late (issue 12: 11 s and 25 s). Giving up a retry
# series after 2 s lets the next waiting call start a fresh attempt at once instead.
_RECONNECT_TIMEOUT_S = 2.0


class RetryError(Exception):
    """Roll back and run the operation again (a conflict, new accounts, a due lease, new budgets)."""


@dataclass
class Attempt:
    """What one try of an operation did so far (kept across its retries)."""

    commit_sent: bool = False
    """``COMMIT`` (or a one-statement write) was sent: after a lost connection the outcome is unknown."""
    swept: bool = False
    """The expiry sweep ran once for this operation."""
    slow: bool = False
    """Lock the call's sharded accounts and their shards (a shard ran dry, or their caps are stale)."""
    general: bool = False
    """Skip the one-trip server function (it answered that this call is not its plain case)."""


class Database:
    """A pool of connections to one ledger schema, checked at the current schema version when it opens.

    Args:
        conninfo: a libpq URL without the store's own options (:func:`~.postgres_rows.split_url`).
        options: the store options the URL carried (``min_size``, ``max_size``, ``timeout_s``);
            they win over the keyword arguments.
        schema: the schema holding the ledger (default: the server's ``search_path``).
        min_size, max_size: connections kept open, and at most.
        timeout_s: how long an operation waits for a free connection, seconds.
        connect_timeout_s: how long one connection attempt may take, seconds.
        lock_timeout_s: how long a statement waits for a row lock, seconds.
        statement_timeout_s: how long one statement may run, seconds.
        durable: False sets ``synchronous_commit = off`` (see :class:`~.postgres.PostgresStore`).

    Raises:
        SchemaVersionError: if the schema is behind (run ``comptroller db upgrade``) or ahead.
        LedgerUnavailableError: if the database cannot be reached within ``timeout_s``.
    """

    def __init__(self, conninfo: str, options: Mapping[str, float], *, schema: str | None, min_size: int,
                 max_size: int, timeout_s: float, connect_timeout_s: float, lock_timeout_s: float,
                 statement_timeout_s: float, durable: bool) -> None:
        self.where = redact(conninfo) + (f" (schema {schema})" if schema else "")
        self.timeout_s = options.get("timeout_s", timeout_s)
        """How long an operation waits for a free connection, seconds."""
        self._settings = {"TimeZone": "UTC", "lock_timeout": f"{int(lock_timeout_s * 1000)}ms",
                          "statement_timeout": f"{int(statement_timeout_s * 1000)}ms",
                          "idle_in_transaction_session_timeout": f"{int(max(lock_timeout_s, 60.0) * 1000)}ms",
                          # a prepared statement is planned once per session, not at every execution (the
                          # plans are index lookups whatever the parameters; BENCHMARKS.md, issue 14)
                          "plan_cache_mode": "force_generic_plan"}
        if not durable:
            self._settings["synchronous_commit"] = "off"
        self._schema = schema
        max_conns = int(options.get("max_size", max_size))
        self._pool = ConnectionPool(
            conninfo, min_size=min(int(options.get("min_size", min_size)), max_conns), max_size=max_conns,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout_s)),
                    **({} if "application_name=" in conninfo else {"application_name": "comptroller"})},
            configure=self._configure, timeout=self.timeout_s, open=False, name="comptroller-ledger",
            reconnect_timeout=_RECONNECT_TIMEOUT_S)
        self._pool.open(wait=False)
        try:
            self.run(lambda conn, _: check_version(conn, self.where))
        except LedgerUnavailableError as exc:
            self._pool.close()
            raise LedgerUnavailableError(f"{exc} ({why_not(conninfo, connect_timeout_s)})") from exc
        except BaseException:
            self._pool.close()
            raise

    def _configure(self, conn: Conn) -> None:
        for name, value in self._settings.items():
            conn.execute(sql.SQL("SET {} TO {}").format(sql.Identifier(name), sql.Literal(value)))
        if self._schema is not None:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))

    def _unavailable(self, exc: Exception, *, outcome_unknown: bool = False) -> LedgerUnavailableError:
        if isinstance(exc, PoolTimeout):
            stats = self._pool.get_stats()
            message = (f"ledger {self.where} unavailable: no database connection within {self.timeout_s:g} s "
                       f"(pool of {self._pool.max_size}: {stats.get('pool_size', 0)} open, "
                       f"{stats.get('pool_available', 0)} free, {stats.get('requests_waiting', 0)} waiting); "
                       "the call is refused: retry later, or raise pool_max_size / pool_timeout_s")
        elif isinstance(exc, errors.LockNotAvailable | errors.QueryCanceled):
            message = (f"ledger {self.where} unavailable: a row stayed locked or a statement ran past its timeout "
                       f"({exc.__class__.__name__}); the call is refused: retry later")
        else:
            message = (f"ledger {self.where} unavailable: {exc.__class__.__name__}: "
                       f"{str(exc).strip() or 'connection lost'}; the call is refused: retry later")
        if outcome_unknown:
            message += (" (the database lost the connection while committing, so the operation may have been "
                        "applied: retry it with the same idempotency key or reservation id)")
        return LedgerUnavailableError(message, outcome_unknown=outcome_unknown)

    def run(self, op: Callable[[Conn, Attempt], _T], attempt: Attempt | None = None) -> _T:
        """Run ``op`` on a pooled connection, again after a conflict; its result. ``attempt``: the flags to
        start from (default: none set).

        Raises:
            LedgerUnavailableError: on any connection problem, a lock or statement timeout, or
                12 conflicts in a row (``outcome_unknown`` if ``COMMIT`` had been sent).
        """
        attempt = attempt or Attempt()
        for n in range(_ATTEMPTS):
            attempt.commit_sent = False
            try:
                with self._pool.connection(timeout=self.timeout_s) as conn:
                    try:
                        return op(conn, attempt)
                    except (RetryError, errors.UniqueViolation, errors.SerializationFailure, errors.DeadlockDetected):
                        rollback(conn)
            except PoolTimeout as exc:
                raise self._unavailable(exc) from exc
            except (errors.LockNotAvailable, errors.QueryCanceled) as exc:
                raise self._unavailable(exc, outcome_unknown=attempt.commit_sent) from exc
            except psycopg.OperationalError as exc:
                if attempt.commit_sent or n == _ATTEMPTS - 1:
                    raise self._unavailable(exc, outcome_unknown=attempt.commit_sent) from exc
                self._pool.check()  # drop the other stale connections, then try on a fresh one
                continue
            time.sleep(random.uniform(0, 0.002 * (n + 1)))
        raise LedgerUnavailableError(f"ledger {self.where}: the operation conflicted {_ATTEMPTS} times in a row; "
                                     "the call is refused: retry later")

    def read(self, query: str | sql.Composed, params: Sequence[Any] = ()) -> list[TupleRow]:
        """Run one statement (its own transaction); its rows. Raises as :meth:`run`."""
        def op(conn: Conn, _: Attempt) -> list[TupleRow]:
            return conn.execute(query, params).fetchall()
        return self.run(op)

    def write(self, query: str, params: Sequence[Any] = ()) -> list[TupleRow]:
        """Run one writing statement (its own transaction); its rows. After a lost connection it is not
        run again, since it may have committed (the error says so). Raises as :meth:`run`."""
        def op(conn: Conn, attempt: Attempt) -> list[TupleRow]:
            attempt.commit_sent = True
            return conn.execute(query, params).fetchall()
        return self.run(op)

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.close()
