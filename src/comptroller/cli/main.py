"""``comptroller``: replay, report, budget and prices commands.

Errors a user can fix (a bad file, an unknown model, an invalid budget) print one
message naming what is wrong and what to do, and exit with status 2; nothing is
written to the ledger by a command that fails validation.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from comptroller.bootstrap import build_engine, price_book
from comptroller.cli.actions import register as register_actions
from comptroller.cli.common import DEFAULT_DB, DbOption, console, err, user_errors
from comptroller.cli.db import db_app
from comptroller.cli.defenses import register as register_defenses
from comptroller.cli.defenses_summary import print_defenses
from comptroller.cli.group import group_app, simulate_app
from comptroller.cli.pnl import posted_transfers
from comptroller.cli.pnl import register as register_pnl
from comptroller.cli.quota import register as register_quota
from comptroller.cli.report import register as register_report
from comptroller.cli.routing import register as register_routing
from comptroller.cli.serve import register as register_serve
from comptroller.cli.topology import register as register_topology
from comptroller.cli.traces import register as register_traces
from comptroller.cli.ui import register as register_ui
from comptroller.cli.wallet import register as register_wallet
from comptroller.clock import SystemClock, VirtualClock
from comptroller.config import ConfigError, Policy, load_policy
from comptroller.domain.budgets import Budget, BudgetError, Period, ScopeIdsMissingError, budget_scope, limit_usd_to_mc
from comptroller.domain.caps import NoOutputCapError
from comptroller.domain.money import format_usd
from comptroller.domain.pricing import ModelPrice, TieredRate, ceiling_mc
from comptroller.domain.reconcile import idle_budgets
from comptroller.domain.scopes import Level
from comptroller.errors import LedgerUnavailableError
from comptroller.prices import PriceBook, UnknownModelError
from comptroller.prices.book import load_prices_data
from comptroller.replay import replay
from comptroller.replay.importers import load as load_traces
from comptroller.replay.inject import inject_loop, parse_loop_spec
from comptroller.replay.runner import DEFAULT_OUTPUT_TOKENS_MAX, MissingModelError
from comptroller.replay.trace import TraceError
from comptroller.reports import Report, build_report, rows_from_replay
from comptroller.reports.chargeback import ALL_TIME, TimeRange
from comptroller.reports.html import render_html
from comptroller.reports.model import ReportRow
from comptroller.reports.pnl import replay_pnl
from comptroller.reports.terminal import render_terminal
from comptroller.storage import StoreURLError, store_from_url
from comptroller.storage.migrations import SchemaVersionError

__all__ = ["app"]

app = typer.Typer(help="comptroller: the economic control plane for multi-agent LLM systems.",
                  no_args_is_help=True, add_completion=False)
budget_app = typer.Typer(help="Set, list and delete budgets in a ledger.", no_args_is_help=True)
prices_app = typer.Typer(help="Look up model prices.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")
app.add_typer(prices_app, name="prices")
app.add_typer(simulate_app, name="simulate")
app.add_typer(group_app, name="group")
app.add_typer(db_app, name="db")
register_routing(app)  # eval-cascade, tco
register_serve(app)  # serve, key
register_defenses(app)  # kill, breaker
register_traces(app)  # traces convert
register_topology(simulate_app)  # simulate topology
register_pnl(app)  # pnl
register_report(app)  # report
register_wallet(app)  # wallet transfer|balance|floor|post
register_quota(app)  # quota set|delete|usage, rate-limit set|delete
register_ui(app)  # ui
register_actions(app, simulate_app)  # action list|approve|reject, task list|show, simulate publisher

_USER_ERRORS = (ConfigError, TraceError, UnknownModelError, MissingModelError, BudgetError, StoreURLError,
                NoOutputCapError, FileNotFoundError, ValueError, SchemaVersionError, LedgerUnavailableError)

_user_errors = user_errors(*_USER_ERRORS)


def _policy(policy_path: Path | None, prices_path: Path | None, default_model: str | None) -> Policy:
    policy = load_policy(policy_path)
    if prices_path is not None:
        extra = load_policy(prices_path)
        policy = policy.model_copy(update={"prices": {**policy.prices, **extra.prices},
                                           "aliases": {**policy.aliases, **extra.aliases}})
    if default_model is not None:
        policy = policy.model_copy(update={"default_model": default_model})
    return policy


def _write_outputs(report: Report, json_out: Path | None, html_out: Path | None, title: str) -> None:
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
        console.print(f"JSON report written to {json_out}")
    if html_out is not None:
        render_html(report, html_out, title=title)
        console.print(f"HTML report written to {html_out}")


@app.command("replay")
@_user_errors
def replay_command(
    paths: Annotated[list[Path], typer.Argument(help="Trace files (see --format)", exists=True, dir_okay=False)],
    trace_format: Annotated[str, typer.Option(
        "--format", help="auto | jsonl | otel | litellm | langfuse | helicone (auto: from each file's first row)",
    )] = "auto",
    policy_path: Annotated[Path | None, typer.Option("--policy", help="Policy TOML: budgets, caps, prices")] = None,
    prices_path: Annotated[Path | None, typer.Option("--prices", help="Price-override TOML on top")] = None,
    prices_data: Annotated[Path | None, typer.Option(
        "--prices-data", help="A newer genai-prices data file (its data.json) to price from instead of the bundled one",
        exists=True, dir_okay=False)] = None,
    db: Annotated[str | None, typer.Option("--db", help="Ledger URL (default: a new temporary SQLite file)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the report as self-contained HTML")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip and count malformed lines")] = False,
    default_model: Annotated[str | None, typer.Option("--default-model", help="Model of unlabelled records")] = None,
    inject_loop_spec: Annotated[str | None, typer.Option(
        "--inject-loop", help="RUN_ID:FACTOR: re-attempt that run until it ran FACTOR times (a retry loop)")] = None,
    since: Annotated[str | None, typer.Option("--from", help="Only calls recorded at or after this instant "
                                              "(ISO date or time; UTC unless it names a zone)")] = None,
    until: Annotated[str | None, typer.Option("--to", help="Only calls recorded before this instant")] = None,
) -> None:
    """Replay recorded LLM calls through the ledger and a policy, in virtual (recorded) time."""
    policy = _policy(policy_path, prices_path, default_model)
    window = TimeRange.parse(since, until)
    records, skipped = load_traces(paths, trace_format, skip_invalid=skip_invalid)
    records = [r for r in records if window.contains(r.ts)]
    if not records:
        within = "" if window == ALL_TIME else f" from {window.describe('recorded time')}"
        raise ValueError(f"the trace files hold no calls{within}")
    if inject_loop_spec is not None:
        records = inject_loop(records, *parse_loop_spec(inject_loop_spec))
    print_defenses(err, policy.defenses())  # issue 13: what is on and what is not
    clock = VirtualClock(records[0].ts)
    with tempfile.TemporaryDirectory() as tmp:
        prices = None if prices_data is None else PriceBook(
            overrides=policy.price_overrides(), aliases=policy.aliases, snapshot=load_prices_data(prices_data),
            snapshot_name=prices_data.name)
        db_url = db or f"sqlite:///{tmp}/replay.db"
        engine = build_engine(db_url=db_url, policy=policy, clock=clock, prices=prices)
        with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, transient=True, disable=len(records) < 5000) as progress:
            task = progress.add_task("replay", total=len(records))
            result = replay(records, engine=engine, clock=clock, policy=policy,
                            on_progress=lambda done: progress.update(task, completed=done))
        book = engine.prices
        events = engine.store.events()
        engine.close()
        engine.store.close()
        pnl = None if policy.fees is None else replay_pnl(posted_transfers(db_url, policy),
                                                          policy.fees.schedule().margin_floor)

    def ceiling(row: ReportRow, output_max: int) -> int:
        return ceiling_mc(book.price(row.model, row.ts), input_tokens_max=row.input_tokens,
                          output_tokens_max=output_max)

    report = build_report(rows_from_replay(result.outcomes), budgets=policy.budget_list(), skipped_lines=skipped,
                          ceiling_fn=ceiling, events=events, default_bound_tokens=DEFAULT_OUTPUT_TOKENS_MAX,
                          price_fn=book.price)
    report.pnl = pnl
    report.time_range = dict(zip(("from", "to"), window.bounds(), strict=True))
    render_terminal(report, console)
    _write_outputs(report, json_out, html_out, "comptroller replay: " + ", ".join(p.name for p in paths))


def _seen_ids(db: str) -> tuple[list[str], dict[str, list[str]]]:
    """The namespaces the ledger's usage log has seen, and each namespace's tenants (sorted)."""
    store = store_from_url(db)
    try:
        seen: dict[str, set[str]] = {}
        for record in store.usage_records():
            seen.setdefault(record.attribution.namespace, set()).add(record.attribution.tenant)
    finally:
        store.close()
    return sorted(seen), {ns: sorted(tenants) for ns, tenants in seen.items()}


def _missing_ids_error(exc: ScopeIdsMissingError, db: str, namespace: str | None) -> BudgetError:
    """The refusal of a budget without the ids its level needs: the options to add and the ids seen."""
    namespaces, tenants = _seen_ids(db)
    hints = []
    if "namespace" in exc.missing:
        hints.append("namespaces in this ledger's usage log: " + (", ".join(namespaces) or "none yet")
                     + " (a gateway's is its policy's `namespace`; replay's is `replay` unless the policy says)")
    if "tenant" in exc.missing:
        shown = [namespace] if namespace is not None else namespaces
        for ns in shown:
            names = tenants.get(ns, [])
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            hints.append(f"tenants seen in {ns!r}: " + (", ".join(names[:10]) + more if names else "none yet"))
    options = " ".join(f"--{name}" for name in exc.missing)
    return BudgetError(f"{exc}. Add {options}; {'; '.join(hints)}. Leave out every id for the level's "
                       f"wildcard (every {exc.level} of every namespace).")


@budget_app.command("set")
@_user_errors
def budget_set(
    level: Annotated[Level, typer.Option(help="Budget level")],
    limit_usd: Annotated[str, typer.Option("--limit-usd", help="Limit in USD, e.g. 25.00 (at least 0.00001, or 0)")],
    period: Annotated[Period, typer.Option(help="Roll-over period")] = Period.MONTH,
    timezone: Annotated[str, typer.Option(help="IANA time zone of the calendar")] = "UTC",
    namespace: Annotated[str | None, typer.Option(help="Namespace id (needed by every level's named scope)")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant id (needed below the tenant level)")] = None,
    agent: Annotated[str | None, typer.Option(help="Agent id")] = None,
    conversation: Annotated[str | None, typer.Option(help="Conversation id (a tenant's; with --tenant)")] = None,
    task: Annotated[str | None, typer.Option(help="Task id (a tenant's; with --tenant)")] = None,
    group: Annotated[str | None, typer.Option(help="A shared group's conversation id (level conversation, "
                                                   "instead of --tenant and --conversation)")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Create or replace a budget.

    A named scope names every level above it (`--level agent --namespace prod --tenant acme
    --agent writer`); leave out every id for the level's wildcard (every scope of the level).
    """
    try:
        usd = Decimal(limit_usd)
    except ArithmeticError:
        raise BudgetError(f"--limit-usd must be a decimal amount such as 25.00, got {limit_usd!r}") from None
    limit_mc = limit_usd_to_mc(usd, "--limit-usd")
    try:
        scope = budget_scope(level, namespace=namespace, tenant=tenant, agent=agent, conversation=conversation,
                             task=task, group=group)
    except ScopeIdsMissingError as exc:
        raise _missing_ids_error(exc, db, namespace) from None
    budget = Budget(level=level, scope=scope, limit_mc=limit_mc, period=period, timezone=timezone)
    store = store_from_url(db)
    try:
        store.put_budget(budget)
    finally:
        store.close()
    console.print(f"budget {budget.id} set: {format_usd(budget.limit_mc)} per {budget.period}")


@budget_app.command("list")
@_user_errors
def budget_list(db: DbOption = DEFAULT_DB) -> None:
    """List budgets and the money on each of their accounts; flag budgets no call matched this period."""
    store = store_from_url(db)
    try:
        budgets, accounts = store.budgets(), store.accounts()
    finally:
        store.close()
    idle = {i.budget.id: i for i in idle_budgets(budgets, accounts, SystemClock().now())}
    table = Table(title="Budgets")
    for name in ("budget", "limit", "scope", "period", "settled", "reserved", "remaining"):
        table.add_column(name)
    for b in budgets:
        last = idle[b.id].last_period_key if b.id in idle else None
        flag = "" if b.id not in idle else (" IDLE: matched no call yet" if last is None
                                            else f" IDLE: no call this {b.period} (last {last})")
        table.add_row(b.id + flag, format_usd(b.limit_mc), "", "", "", "", "")
        for a in (a for a in accounts if a.budget.id == b.id):
            table.add_row("", "", a.scope, a.period_key, format_usd(a.settled_mc), format_usd(a.reserved_mc),
                          format_usd(a.remaining_mc))
    console.print(table)
    if idle:
        err.print(f"warning: {len(idle)} budget(s) matched no call in their current period; check each scope "
                  "against the traffic's (namespace, tenant, agent ids)", highlight=False)


@budget_app.command("delete")
@_user_errors
def budget_delete(budget_id: Annotated[str, typer.Argument(help="Budget id, as `budget list` shows")],
                  db: DbOption = DEFAULT_DB) -> None:
    """Delete a budget (its accounts stay for history)."""
    store = store_from_url(db)
    try:
        found = store.delete_budget(budget_id)
    finally:
        store.close()
    if not found:
        raise BudgetError(f"no budget {budget_id!r}; `comptroller budget list` shows the ids")
    console.print(f"budget {budget_id} deleted")


def _rate_text(rate: object) -> str:
    """A rate for people: ``$3``, or a tiered one as ``$3 up to 200,000 input tokens; $6 above``."""
    if rate is None:
        return "-"
    if isinstance(rate, TieredRate):
        parts, lower = [], rate.base
        for start, tier_rate in rate.tiers:
            parts.append(f"${lower} up to {start:,} input tokens")
            lower = tier_rate
        return "; ".join([*parts, f"${lower} above"])
    return f"${rate}"


@prices_app.command("show")
@_user_errors
def prices_show(
    model: Annotated[str, typer.Argument(help="Model label or id")],
    at: Annotated[str | None, typer.Option(help="ISO time to price at (default: now, UTC)")] = None,
    prices_path: Annotated[Path | None, typer.Option("--prices", help="Price-override or policy TOML")] = None,
    prices_data: Annotated[Path | None, typer.Option(
        "--prices-data", help="A newer genai-prices data file to look up instead of the bundled one",
        exists=True, dir_okay=False)] = None,
) -> None:
    """Show a model's price per million tokens (genai-prices, or your overrides)."""
    when = datetime.fromisoformat(at) if at else datetime.now(UTC)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    policy = load_policy(prices_path)
    book = price_book(policy) if prices_data is None else PriceBook(
        overrides=policy.price_overrides(), aliases=policy.aliases, snapshot=load_prices_data(prices_data),
        snapshot_name=prices_data.name)
    price: ModelPrice = book.price(model, when)
    table = Table(title=f"{model} -> {price.model} at {when.isoformat()} ({price.source})")
    table.add_column("bucket")
    table.add_column("USD per million tokens", justify="right")
    for name in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok"):
        table.add_row(name, _rate_text(getattr(price, name)))
    table.caption = f"context window: {price.context_window or 'unknown'} tokens"
    console.print(table)
