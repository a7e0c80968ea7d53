"""``comptroller quota set|delete|usage`` and ``comptroller rate-limit set|delete``: limits at run time.

Quotas and rate limits come from the policy (``[[quotas]]``, ``[[rate_limits]]``,
:mod:`comptroller.limits_config`) and from the namespace's limit book in the ledger
(:mod:`comptroller.domain.limit_book`), which these commands change: an entry there replaces
the policy's for the same unit, level, scope (and period), and every gateway worker and SDK
engine on the ledger applies it from its next admission. Counts live in the ledger's state
rows (kind ``quota``, :mod:`comptroller.domain.quotas`), one per quota, scope and period.
Errors a user can fix print one message and exit with status 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from comptroller.cli.common import DEFAULT_DB, DbOption, console, user_errors
from comptroller.config import ConfigError, load_policy
from comptroller.domain.budgets import Period
from comptroller.domain.held_counts import HeldCount
from comptroller.domain.limit_book import LimitBook, book_key, merged
from comptroller.domain.limit_rows import KIND
from comptroller.domain.quotas import QUOTA, Quota, QuotaUnit
from comptroller.domain.rate_limits import LimitLevel, RateUnit
from comptroller.domain.scopes import Level
from comptroller.domain.state import StoredState
from comptroller.errors import LedgerUnavailableError
from comptroller.limits_config import QuotaSpec, RateLimitSpec
from comptroller.ports import LedgerStore
from comptroller.storage import StoreURLError, store_from_url
from comptroller.storage.migrations import SchemaVersionError

__all__ = ["quota_app", "rate_limit_app", "register"]

quota_app = typer.Typer(help="Quotas in tokens and messages: set, delete, and what each has used and holds.",
                        no_args_is_help=True)
rate_limit_app = typer.Typer(help="RPM and TPM limits per key, tenant and agent: set and delete.", no_args_is_help=True)
_user_errors = user_errors(ConfigError, StoreURLError, SchemaVersionError, LedgerUnavailableError, ValueError)
_CAS_ATTEMPTS = 100
Namespace = Annotated[str, typer.Option(help="The namespace whose calls the limit applies to")]
Tenant = Annotated[str | None, typer.Option(help="Tenant id (leave the level's own id out for every one)")]
Agent = Annotated[str | None, typer.Option(help="Agent id")]


def register(app: typer.Typer) -> None:
    """Add the ``quota`` and ``rate-limit`` command groups to ``app``."""
    app.add_typer(quota_app, name="quota")
    app.add_typer(rate_limit_app, name="rate-limit")


def _change_book(db: str, namespace: str, change: Callable[[LimitBook], LimitBook | None]) -> bool:
    """Apply ``change`` to the namespace's book in the ledger ``db`` by compare-and-set (retried on a race);
    False if nothing changed."""
    store = store_from_url(db)
    try:
        return _change_stored_book(store, namespace, change)
    finally:
        store.close()


def _change_stored_book(store: LedgerStore, namespace: str, change: Callable[[LimitBook], LimitBook | None]) -> bool:
    key = book_key(namespace)
    for _ in range(_CAS_ATTEMPTS):
        stored = store.state(key)
        book = LimitBook() if stored is None else LimitBook.from_record(stored.record, stored.version)
        new = change(book)
        if new is None:
            return False
        if store.put_state(StoredState(key, new.version, new.to_record()), expected_version=book.version):
            return True
    raise LedgerUnavailableError(f"the limits of namespace {namespace!r} kept changing; try again")


def _quota(unit: QuotaUnit, level: Level, limit: int, period: Period, timezone: str, namespace: str,
           ids: dict[str, str | None]) -> Quota:
    return QuotaSpec(unit=unit, level=level, limit=limit, period=period, timezone=timezone, namespace=namespace,
                     **ids).quota(namespace)


@quota_app.command("set")
@_user_errors
def set_quota(
    unit: Annotated[QuotaUnit, typer.Option(help="tokens (input + output), output_tokens or messages")],
    level: Annotated[Level, typer.Option(help="The level it applies to")],
    limit: Annotated[int, typer.Option(help="Tokens or messages per period", min=0)],
    namespace: Namespace,
    period: Annotated[Period, typer.Option(help="total, day, week or month")] = Period.MONTH,
    timezone: Annotated[str, typer.Option(help="IANA zone of the calendar")] = "UTC",
    tenant: Tenant = None, agent: Agent = None,
    conversation: Annotated[str | None, typer.Option(help="Conversation id")] = None,
    task: Annotated[str | None, typer.Option(help="Task id")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Create or replace a quota; it applies from every engine's next admission."""
    quota = _quota(unit, level, limit, period, timezone, namespace,
                   {"tenant": tenant, "agent": agent, "conversation": conversation, "task": task})
    _change_book(db, namespace, lambda book: book.with_quota(quota))
    console.print(f"quota set: {quota.limit:,} {quota.unit} per {quota.period} on {quota.level} {quota.scope!r}",
                  highlight=False)


@quota_app.command("delete")
@_user_errors
def delete_quota(
    unit: Annotated[QuotaUnit, typer.Option(help="tokens, output_tokens or messages")],
    level: Annotated[Level, typer.Option(help="The level")],
    namespace: Namespace,
    period: Annotated[Period, typer.Option(help="total, day, week or month")] = Period.MONTH,
    tenant: Tenant = None, agent: Agent = None,
    conversation: Annotated[str | None, typer.Option(help="Conversation id")] = None,
    task: Annotated[str | None, typer.Option(help="Task id")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Delete a quota set with ``quota set`` (a policy's quota of the same scope applies again)."""
    quota = _quota(unit, level, 0, period, "UTC", namespace,
                   {"tenant": tenant, "agent": agent, "conversation": conversation, "task": task})
    found = _change_book(db, namespace, lambda book: book.without_quota(quota))
    if not found:
        raise ValueError(f"no {quota.unit} quota per {quota.period} on {quota.level} {quota.scope!r} was set; "
                         "`comptroller quota usage` lists the rows")
    console.print(f"quota deleted: {quota.unit} per {quota.period} on {quota.level} {quota.scope!r}", highlight=False)


@rate_limit_app.command("set")
@_user_errors
def set_rate_limit(
    level: Annotated[LimitLevel, typer.Option(help="key, tenant or agent")],
    namespace: Namespace,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute (also the burst)", min=1)] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (also the burst)", min=1)] = None,
    key: Annotated[str | None, typer.Option(help="API key id (level key)")] = None,
    tenant: Tenant = None, agent: Agent = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Create or replace an RPM and/or TPM limit; it applies from every engine's next admission."""
    limits = RateLimitSpec(level=level, rpm=rpm, tpm=tpm, key=key, tenant=tenant, agent=agent,
                           namespace=None if level is LimitLevel.KEY else namespace).limits(namespace)
    def change(book: LimitBook) -> LimitBook:
        for limit in limits:
            book = book.with_rate_limit(limit)
        return book

    _change_book(db, namespace, change)
    for limit in limits:
        console.print(f"rate limit set: {limit.limit:,} {limit.unit} on {limit.level} {limit.scope!r}",
                      highlight=False)


@rate_limit_app.command("delete")
@_user_errors
def delete_rate_limit(
    level: Annotated[LimitLevel, typer.Option(help="key, tenant or agent")],
    unit: Annotated[RateUnit, typer.Option(help="rpm or tpm")],
    namespace: Namespace,
    key: Annotated[str | None, typer.Option(help="API key id (level key)")] = None,
    tenant: Tenant = None, agent: Agent = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Delete a rate limit set with ``rate-limit set`` (a policy's limit of the same scope applies again)."""
    (limit,) = [r for r in RateLimitSpec(level=level, rpm=1, tpm=1, key=key, tenant=tenant, agent=agent,
                                         namespace=None if level is LimitLevel.KEY else namespace).limits(namespace)
                if r.unit is unit]
    found = _change_book(db, namespace, lambda book: book.without_rate_limit(limit))
    if not found:
        raise ValueError(f"no {unit} limit on {level} {limit.scope!r} was set")
    console.print(f"rate limit deleted: {unit} on {level} {limit.scope!r}", highlight=False)


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
    configured = load_policy(policy).limits()
    store = store_from_url(db)
    try:
        rows = store.states(KIND)
        books = {s.key.key: LimitBook.from_record(s.record, s.version) for s in rows
                 if s.key.key.startswith(book_key("").key)}
    finally:
        store.close()
    table = Table(title="Quotas")
    for name in ("unit", "level", "period", "from", "scope", "used", "held", "limit", "remaining"):
        table.add_column(name, justify="right" if name in ("used", "held", "limit", "remaining") else "left")
    for row in (r for r in rows if r.key.key.startswith(f"{QUOTA}:")):
        unit, level, period, start, scope = row.key.key.removeprefix(f"{QUOTA}:").split(":", 4)
        count = HeldCount.from_record(row.record, row.version)
        namespace = scope.split("|", 1)[0]
        quotas, _ = merged(configured.quotas, configured.rate_limits, books.get(namespace, LimitBook()))
        limit = _limit(quotas, unit, level, period, scope)
        table.add_row(unit, level, period, start, scope, f"{count.settled:,}", f"{count.held:,}",
                      "" if limit is None else f"{limit:,}",
                      "" if limit is None else f"{limit - count.settled - count.held:,}")
    console.print(table)
