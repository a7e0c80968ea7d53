"""``comptroller wallet``: transfers between wallets, balances, floors, and posting the usage log.

Errors a user can fix print one message naming what is wrong and what to do, and exit
with status 2. A transfer's business outcome (``exists``, ``insufficient_funds``...) is
printed as its result code; any code but ``ok`` and ``exists`` exits with status 1.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from comptroller.cli.common import DEFAULT_DB, DbOption, console, user_errors
from comptroller.config import ConfigError, load_policy
from comptroller.domain.money import format_usd, parse_usd, usd_to_mc_half_up
from comptroller.domain.wallets.accounts import account_kind
from comptroller.domain.wallets.transfers import Transfer, TransferCode
from comptroller.economics_config import infra_items
from comptroller.errors import LedgerUnavailableError
from comptroller.storage import StoreURLError, store_from_url
from comptroller.storage.migrations import SchemaVersionError
from comptroller.storage.transfer_stores import transfers_from_url
from comptroller.wallet_posting import post_usage

__all__ = ["register", "wallet_app"]

wallet_app = typer.Typer(help="Wallets: transfers between accounts, balances, floors, posting the usage log.",
                         no_args_is_help=True)
_user_errors = user_errors(ConfigError, StoreURLError, SchemaVersionError, LedgerUnavailableError, ValueError,
                           FileNotFoundError)


def register(app: typer.Typer) -> None:
    """Add the ``wallet`` command group to ``app``."""
    app.add_typer(wallet_app, name="wallet")


def _amount_mc(amount_usd: str, option: str = "--amount-usd") -> int:
    """Whole millicents from a USD string (a leading ``-`` allowed for a floor); a fraction of a millicent is an
    error, not a rounding."""
    negative = amount_usd.strip().startswith("-")
    usd = parse_usd(amount_usd.strip().removeprefix("-"), option)
    mc = usd_to_mc_half_up(usd)
    if usd * 100_000 != mc:
        raise ValueError(f"{option} {amount_usd} is not a whole number of millicents ($0.00001); round it")
    return -mc if negative else mc


@wallet_app.command("transfer")
@_user_errors
def transfer(
    debit: Annotated[str, typer.Option("--from", help="Account paying, e.g. 'agent:replay|acme|writer'")],
    credit: Annotated[str, typer.Option("--to", help="Account paid, e.g. 'agent:replay|acme|tutor'")],
    amount_usd: Annotated[str, typer.Option("--amount-usd", help="Amount, USD decimal string (e.g. 0.25)")],
    transfer_id: Annotated[str, typer.Option("--id", help="Your id for this transfer: a retry with it is a no-op")],
    kind: Annotated[str, typer.Option(help="What it is for: knowledge_fee, teaching_fee, deposit...")] =
        "knowledge_fee",
    ref: Annotated[str, typer.Option(help="What it refers to (free text)")] = "",
    db: DbOption = DEFAULT_DB,
) -> None:
    """Move money from one wallet to another (knowledge and teaching fees between agents, deposits)."""
    account_kind(debit)
    account_kind(credit)
    if amount_usd.strip().startswith("-"):
        raise ValueError(f"--amount-usd must be > 0, got {amount_usd}: swap --from and --to to move money back")
    t = Transfer(id=transfer_id, debit_account=debit, credit_account=credit, amount_mc=_amount_mc(amount_usd),
                 kind=kind, ts=datetime.now(UTC), ref=ref)
    store = transfers_from_url(db)
    try:
        result = store.create_transfers([t])[0]
        balance = store.balance(debit)
    finally:
        store.close()
    console.print(f"{result.code.value}: {transfer_id} {format_usd(t.amount_mc)} {debit} -> {credit} "
                  f"({debit} now {format_usd(balance.balance_mc)})", highlight=False)
    if result.code not in (TransferCode.OK, TransferCode.EXISTS):
        raise typer.Exit(1)


@wallet_app.command("balance")
@_user_errors
def balance(
    account: Annotated[str | None, typer.Option(help="One account (default: every account)")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Balances (credits - debits) of every wallet account; they sum to zero."""
    store = transfers_from_url(db)
    try:
        rows = [store.balance(account)] if account else store.balances()
    finally:
        store.close()
    table = Table(title="Wallet balances")
    for name in ("account", "debits", "credits", "balance", "floor"):
        table.add_column(name, justify="left" if name == "account" else "right")
    for a in rows:
        table.add_row(a.account, format_usd(a.debits_mc), format_usd(a.credits_mc), format_usd(a.balance_mc),
                      "" if a.floor_mc is None else format_usd(a.floor_mc))
    console.print(table)
    if account is None:
        console.print(f"sum of balances: {format_usd(sum(a.balance_mc for a in rows))}", highlight=False)


@wallet_app.command("floor")
@_user_errors
def floor(
    account: Annotated[str, typer.Option(help="The account, e.g. 'agent:replay|acme|writer'")],
    floor_usd: Annotated[str | None, typer.Option("--floor-usd", help="Lowest balance allowed (0: prepaid; "
                                                   "-5: a $5 credit line)")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Set (or without --floor-usd remove) an account's floor: transfers below it, and an agent's calls whose
    ceiling does not fit above it, are refused insufficient_funds."""
    account_kind(account)
    store = transfers_from_url(db)
    try:
        store.set_floor(account, None if floor_usd is None else _amount_mc(floor_usd, "--floor-usd"))
    finally:
        store.close()
    console.print(f"{account}: floor {'none' if floor_usd is None else '$' + floor_usd}", highlight=False)


@wallet_app.command("post")
@_user_errors
def post(
    policy_path: Annotated[Path | None, typer.Option("--policy", help="Policy with [fees] and [[infra]]")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Post the usage log to the wallets (LLM cost, fees, infra shares); idempotent."""
    policy = load_policy(policy_path)
    ledger, store = store_from_url(db), transfers_from_url(db)
    try:
        summary = post_usage(ledger.usage_records(), store, fees=policy.fees.schedule() if policy.fees else None,
                             infra=infra_items(policy.infra))
    finally:
        store.close()
        ledger.close()
    console.print(f"{summary.records} usage rows read, {summary.applied} transfers applied"
                  + (f"; problems: {summary.problems}" if summary.problems else ""), highlight=False)
