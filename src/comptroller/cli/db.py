"""``comptroller db upgrade | check``: the ledger database's schema and its reconciliation.

* ``db upgrade`` applies the PostgreSQL schema migrations this comptroller ships
  (idempotent; safe from many hosts at once). SQLite ledgers create their schema
  when they are opened, so for them it only opens the file.
* ``db check`` proves the ledger's balances equal its usage log plus its open
  reservations (:mod:`comptroller.storage.reconcile`) and lists every difference;
  exit status 0 when consistent, 1 when not, 2 on a usage error.
"""

from __future__ import annotations

import psycopg
import typer
from rich.markup import escape

from comptroller.cli.common import DEFAULT_DB, DbOption, console, err, user_errors
from comptroller.errors import LedgerUnavailableError
from comptroller.storage import StoreURLError, store_from_url
from comptroller.storage.migrations import LATEST_VERSION, SchemaVersionError, upgrade
from comptroller.storage.postgres import redact, split_url
from comptroller.storage.reconcile import LedgerSnapshot, reconcile

__all__ = ["db_app"]

db_app = typer.Typer(help="The ledger database: schema upgrades and the reconciliation check.",
                     no_args_is_help=True)
_ERRORS = (StoreURLError, SchemaVersionError, LedgerUnavailableError, ValueError, OSError)


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


@db_app.command("upgrade")
@user_errors(*_ERRORS)
def upgrade_command(db: DbOption = DEFAULT_DB) -> None:
    """Create or upgrade the ledger schema to the version this comptroller needs."""
    if not _is_postgres(db):
        store_from_url(db).close()
        console.print(f"{db}: SQLite and memory ledgers create their schema when opened; nothing to upgrade")
        return
    conninfo, _ = split_url(db)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            before, after = upgrade(conn)
    except psycopg.OperationalError as exc:
        raise LedgerUnavailableError(f"cannot reach the ledger database {redact(conninfo)}: "
                                     f"{str(exc).strip()}") from None
    if before == after:
        console.print(f"{redact(conninfo)}: ledger schema already at version {after}; nothing to do")
    else:
        console.print(f"{redact(conninfo)}: ledger schema upgraded from version {before} to {after}")


@db_app.command("check")
def check_command(db: DbOption = DEFAULT_DB) -> None:
    """Prove balances = usage log + open reservations; list every difference (exit 1 if any)."""
    snapshot = _snapshot(db)
    differences = reconcile(snapshot)
    summary = (f"{len(snapshot.balances):,} accounts, {len(snapshot.holds):,} reservations, "
               f"{len(snapshot.charges):,} usage rows (schema version {LATEST_VERSION})")
    if not differences:
        console.print(f"ledger consistent: {summary}")
        return
    for d in differences:
        console.print(f"{d.kind}: {escape(d.message)}", highlight=False)
    err.print(f"ledger NOT consistent: {len(differences)} difference(s) in {summary}")
    raise typer.Exit(1)


@user_errors(*_ERRORS)
def _snapshot(db: str) -> LedgerSnapshot:
    store = store_from_url(db)
    try:
        return store.ledger_snapshot()
    finally:
        store.close()
