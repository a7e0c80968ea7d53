"""``comptroller simulate group`` (the group-chat storm) and ``comptroller group check|dispatch``.

Errors a user can fix (a bad group file, an unknown member, a missing trace) print one
message naming what is wrong and what to do, and exit with status 2.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from comptroller.bootstrap import price_book
from comptroller.cli.common import console, err, user_errors
from comptroller.config import ConfigError, load_policy
from comptroller.domain.dispatch import GroupError, Kind, Message, mentions_in
from comptroller.domain.money import format_usd
from comptroller.groups import load_groups
from comptroller.prices import UnknownModelError
from comptroller.replay.trace import TraceError
from comptroller.simulate import STRATEGIES, StormConfig, TokenSizes, render_storm_html, run_storm
from comptroller.simulate import story as storm_story

__all__ = ["group_app", "simulate_app"]

simulate_app = typer.Typer(help="Simulate multi-agent traffic through the ledger.", no_args_is_help=True)
group_app = typer.Typer(help="Group chats: check group files, try a dispatch.", no_args_is_help=True)

_USER_ERRORS = (GroupError, ConfigError, TraceError, UnknownModelError, FileNotFoundError, ValueError)
DEFAULT_TRACE = Path("data/traces/chatdev_warehouse.jsonl")

_user_errors = user_errors(*_USER_ERRORS)


def _sizes_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--agents must be room sizes separated by commas, such as 5,21,221; got {text!r}") from None


def _decimal_usd(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"--budget-usd must be a decimal amount such as 2.50, got {text!r}") from None


@simulate_app.command("group")
@_user_errors
def simulate_group(
    agents: Annotated[str, typer.Option(help="Room sizes N, comma-separated")] = "5,8,13,21,34,55,89,144,221",
    messages: Annotated[int, typer.Option(help="Input messages M per room")] = 40,
    k: Annotated[int, typer.Option(help="The dispatcher's most responders per message")] = 3,
    topics: Annotated[int, typer.Option(help="Topics the members' domains spread over")] = 8,
    mention_share: Annotated[float, typer.Option(help="Share of input messages that @mention a member")] = 0.3,
    model: Annotated[str, typer.Option(help="Model of every call (priced by genai-prices)")] = "gpt-4o-mini",
    seed: Annotated[int, typer.Option(help="Random seed")] = 7,
    budget_usd: Annotated[str | None, typer.Option("--budget-usd", help="Group (conversation) budget")] = None,
    strategy: Annotated[list[str] | None, typer.Option(help=f"Strategies to run: {', '.join(STRATEGIES)}")] = None,
    traces: Annotated[list[Path] | None, typer.Option("--trace", help="JSONL traces to draw token sizes from")] = None,
    prices_path: Annotated[Path | None, typer.Option("--prices", help="Price-override TOML")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the plot as self-contained HTML")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the rows as JSON")] = None,
) -> None:
    """Model a room of N agents over M messages: no dispatch vs mention-only vs our dispatcher."""
    config = StormConfig(agents=_sizes_list(agents), messages=messages, k=k, topics=topics,
                         mention_share=mention_share, model=model, seed=seed, budget_usd=_decimal_usd(budget_usd),
                         strategies=tuple(strategy or STRATEGIES))
    paths = traces or [DEFAULT_TRACE]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no trace file {path}; pass --trace data/traces/chatdev_warehouse.jsonl from the "
                                    f"repository root")
    sizes = TokenSizes.from_traces(paths)
    book = price_book(load_policy(prices_path))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("simulating", total=len(config.agents) * len(config.strategies))
        rows = run_storm(config, sizes, book, on_progress=lambda s, n: progress.update(
            task, advance=1, description=f"{s} N={n}"))
    table = Table(title=f"Group-chat storm: {config.messages} input messages, k={config.k}, model {config.model}; "
                        f"per input message: replies, tokens, cost")
    for name in ("strategy", "N", "replies", "tokens", "cost", "total cost", "on-topic", "refused"):
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for r in rows:
        table.add_row(r.strategy, str(r.agents), f"{r.replies_per_input:.2f}", f"{r.tokens_per_input:,.0f}",
                      format_usd(round(r.cost_mc_per_input)), format_usd(r.cost_mc),
                      "-" if r.relevant_share is None else f"{r.relevant_share:.0%}", str(r.refused))
    console.print(table)
    for sentence in storm_story(rows, config):
        console.print(f"- {sentence}")
    if html_out is not None:
        render_storm_html(rows, config, html_out)
        console.print(f"HTML plot written to {html_out}")
    if json_out is not None:
        json_out.write_text(json.dumps([r.to_dict() for r in rows], indent=2), encoding="utf-8")
        console.print(f"JSON rows written to {json_out}")


@group_app.command("check")
@_user_errors
def group_check(path: Annotated[Path, typer.Argument(help="Group file (TOML with [groups.NAME] tables)")]) -> None:
    """Validate a group file and show each group's members, roles and dispatch settings."""
    for definition in load_groups(path).values():
        config = definition.config
        table = Table(title=f"group {definition.id} (conversation {definition.group.conversation}): k={config.k}, "
                            f"cooldown {config.cooldown_messages} messages / {config.cooldown_s:g} s, ping-pong "
                            f"limit {config.loops.ping_pong_exchanges_max}")
        for name in ("agent", "role", "decides", "answers", "after", "isolated", "tenant", "description"):
            table.add_column(name)
        for m in definition.group.members:
            rule = definition.group.rule(m.role)
            table.add_row(m.agent, m.role, "yes" if m.decides else "", ", ".join(sorted(rule.answers)),
                          ", ".join(rule.after), "yes" if rule.isolated else "", definition.tenants[m.agent],
                          m.description)
        console.print(table)


@group_app.command("dispatch")
@_user_errors
def group_dispatch(
    path: Annotated[Path, typer.Argument(help="Group file")],
    group: Annotated[str, typer.Argument(help="Group name")],
    text: Annotated[str, typer.Argument(help="The message; @agent mentions are read from it")],
    author: Annotated[str, typer.Option(help="Who writes it (a member or a person)")] = "person",
    kind: Annotated[Kind, typer.Option(help="Message kind")] = Kind.CHAT,
    remaining: Annotated[float | None, typer.Option(help="Group budget left, as a fraction (default: none)")] = None,
) -> None:
    """Show who would answer one message in an empty room, and why each other member would not."""
    groups = load_groups(path)
    if group not in groups:
        raise ValueError(f"no group {group!r} in {path}; groups: {', '.join(sorted(groups))}")
    message = Message("cli", author, text, datetime.now(UTC), kind, mentions_in(text))
    decision = groups[group].dispatcher.dispatch(message, [], remaining)
    table = Table(title=f"{group}: mode {decision.mode}, k={decision.k}")
    for name in ("agent", "answers", "reason", "detail"):
        table.add_column(name)
    for pick in decision.responders:
        score = "" if pick.score is None else f"relevance {pick.score:.3f}"
        table.add_row(pick.agent, "yes", str(pick.reason), score)
    for left in decision.left_out:
        table.add_row(left.agent, "", str(left.reason), left.detail)
    console.print(table)
