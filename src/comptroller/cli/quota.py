"""``comptroller quota usage``: what each token and message quota has used and holds, from the ledger.

Quotas are configured in the policy (``[[quotas]]``, :mod:`comptroller.limits_config`); their
counts live in the ledger's state rows (kind ``quota``, :mod:`comptroller.domain.quotas`), one
per quota, scope and period. Errors a user can fix print one message and exit with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from comptroller.cli.common import DEFAULT_DB, DbOption, console, user_errors
from comptroller.config import ConfigError, load_policy
from comptroller.domain.held_counts import HeldCount
from comptroller.domain.quotas import QUOTA, Quota
from comptroller.errors import LedgerUnavailableError
from comptroller.storage import StoreURLError, store_from_url
from comptroller.storage.migrations import SchemaVersionError

__all__ = ["quota_app", "register"]

quota_app = typer.Typer(help="Quotas in tokens and messages: what each has used and holds.", no_args_is_help=True)
_user_errors = user_errors(ConfigError, StoreURLError, SchemaVersionError, LedgerUnavailableError, ValueError)


def register(app: typer.Typer) -> None:
    """Add the ``quota`` command group to ``app``."""
    app.add_typer(quota_app, name="quota")


def _limit(quotas: tuple[Quota, ...], unit: str, level: str, period: str, scope: str) -> int | None:
    """The limit of the quota a row counts for (its own scope first, then ``*``), or None if not configured."""
    matches = [q for q in quotas if (str(q.unit), str(q.level), str(q.period)) == (unit, level, period)]
    own = next((q for q in matches if q.scope == scope), None) or next((q for q in matches if q.scope == "*"), None)
    return None if own is None else own.limit


@quota_app.command("usage")
@_user_errors
def usage(
    policy: Annotated[Path | None, typer.Option(help="The policy whose [[quotas]] give the limits")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Every quota row: unit, level, period and its start, scope, used, held by calls in flight, limit."""
    quotas = load_policy(policy).limits().quotas
    store = store_from_url(db)
    try:
        rows = store.states(QUOTA)
    finally:
        store.close()
    table = Table(title="Quotas")
    for name in ("unit", "level", "period", "from", "scope", "used", "held", "limit", "remaining"):
        table.add_column(name, justify="right" if name in ("used", "held", "limit", "remaining") else "left")
    for row in rows:
        unit, level, period, start, scope = row.key.key.split(":", 4)
        count = HeldCount.from_record(row.record, row.version)
        limit = _limit(quotas, unit, level, period, scope)
        table.add_row(unit, level, period, start, scope, f"{count.settled:,}", f"{count.held:,}",
                      "" if limit is None else f"{limit:,}",
                      "" if limit is None else f"{limit - count.settled - count.held:,}")
    console.print(table)
