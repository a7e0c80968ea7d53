"""``comptroller db upgrade | check``: the ledger database's schema and its reconciliation.

* ``db upgrade`` applies the PostgreSQL schema migrations this comptroller ships
  (idempotent; safe from many hosts at once). SQLite ledgers create their schema
  when they are opened, so for them it only opens the file.
* ``db check`` first resolves every lease already expired (the sweep every ledger
  operation runs: a sent call's lease is charged its ceiling as ``unknown_outcome``,
  DESIGN.md rule 12; ``--no-sweep`` reads only), then proves the ledger's balances
  equal its usage log plus its open reservations (:mod:`comptroller.domain.reconcile`),
  lists every difference and names every call charged as ``unknown_outcome``;
  exit status 0 when consistent, 1 when not, 2 on a usage error.
"""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer
from rich.markup import escape

from comptroller.cli.common import DEFAULT_DB, DbOption, console, err, user_errors
from comptroller.clock import SystemClock
from comptroller.domain.reconcile import IdleBudget, LedgerSnapshot, idle_budgets, reconcile, unknown_outcomes
from comptroller.errors import LedgerUnavailableError
from comptroller.storage import StoreURLError, store_from_url
from comptroller.storage.migrations import LATEST_VERSION, SchemaVersionError, upgrade
from comptroller.storage.postgres import redact, split_url

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
def check_command(db: DbOption = DEFAULT_DB,
                  sweep: Annotated[bool, typer.Option(help="Resolve expired leases first (as every ledger "
                                                           "operation does); --no-sweep only reads.")] = True,
                  ) -> None:
    """Prove balances = usage log + open reservations; list every difference (exit 1 if any) and every call
    charged its ceiling as unknown_outcome."""
    snapshot, swept = _snapshot(db, sweep=sweep)
    differences = reconcile(snapshot)
    for idle in _idle(db):
        err.print(f"warning: idle budget: {escape(idle.message)}", highlight=False)
    unknown = unknown_outcomes(snapshot)
    for hold in unknown:
        console.print(f"unknown_outcome: reservation {hold.reservation_id} was sent and its lease expired before "
                      f"a settle or release reached the ledger: charged its ceiling {hold.ceiling_mc:,} mc",
                      highlight=False)
    summary = (f"{len(snapshot.balances):,} accounts, {len(snapshot.holds):,} reservations, "
               f"{len(snapshot.charges):,} usage rows, {len(unknown):,} unknown outcome(s) charged at their "
               f"ceiling, {swept:,} expired lease(s) resolved now (schema version {LATEST_VERSION})")
    if not differences:
        console.print(f"ledger consistent: {summary}")
        return
    for d in differences:
        console.print(f"{d.kind}: {escape(d.message)}", highlight=False)
    err.print(f"ledger NOT consistent: {len(differences)} difference(s) in {summary}")
    raise typer.Exit(1)


@user_errors(*_ERRORS)
def _snapshot(db: str, *, sweep: bool) -> tuple[LedgerSnapshot, int]:
    store = store_from_url(db)
    try:
        swept = store.expire(SystemClock().now()) if sweep else 0
        return store.ledger_snapshot(), swept
    finally:
        store.close()


@user_errors(*_ERRORS)
def _idle(db: str) -> list[IdleBudget]:
    """The budgets that matched no call in their current period (a warning, never an exit status)."""
    store = store_from_url(db)
    try:
        return idle_budgets(store.budgets(), store.accounts(), SystemClock().now())
    finally:
        store.close()
