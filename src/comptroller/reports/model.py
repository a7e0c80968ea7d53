"""The report model: cost and tokens by run, agent, phase and model, refusals, reconciliation, headroom.

:func:`build_report` takes :class:`ReportRow` s, from a replay (:func:`rows_from_replay`,
which also carries the costs the source system logged and the ``max_tokens`` it
requested) or from a ledger's usage log and refusal events (:func:`rows_from_ledger`),
so ``comptroller report`` and ``comptroller replay`` show the same figures. Every
money figure is a sum of settled integer millicents, so totals are exact.

Percentiles use the nearest-rank method on per-run costs (P50 = the median run).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from comptroller.domain.budgets import Budget
from comptroller.domain.ledger import Event, UsageRecord
from comptroller.domain.money import MC_PER_USD, usd_to_mc_half_up
from comptroller.domain.pricing import ModelPrice
from comptroller.replay.runner import CallOutcome
from comptroller.reports.ceiling_miss import CeilingMiss, ceiling_misses
from comptroller.reports.reconcile import CallTokens, Diagnosis, diagnose
from comptroller.reports.trips import TripEntry, trip_timeline

__all__ = ["Report", "ReportRow", "TripEntry", "build_report", "rows_from_ledger", "rows_from_replay", "trip_timeline"]

_RECONCILE_TOLERANCE_PCT = Decimal(1)
_TOP_RUNS = 10
_CAP_ROUNDING = 256


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One call as reports see it. ``refused_level`` set means refused (cost is what it would have cost)."""

    ts: datetime
    run: str
    agent: str
    phase: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_mc: int
    ceiling_mc: int
    refused_level: str | None = None
    refused_code: str | None = None
    logged_cost_usd: Decimal | None = None
    requested_max_tokens: int | None = None
    default_output_bound: bool = False
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    tenant: str = "-"
    refused_reason: str = ""
    reservation_id: str = ""
    key_id: str = "-"


@dataclass
class Group:
    """Totals of one group of admitted calls."""

    key: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_mc: int = 0


CEILING_OVER_REMAINING = "ceiling larger than the remaining budget"
"""The reason of a budget refusal whose recorded cost would have fitted the money left."""


@dataclass
class RefusalGroup:
    """Refused calls of one (level, code, reason), with the spend they prevented.

    ``reason`` is :data:`CEILING_OVER_REMAINING` for budget refusals whose recorded cost
    fitted the remaining money (their "prevented" spend would have been affordable),
    else empty.
    """

    level: str
    code: str
    calls: int = 0
    prevented_mc: int = 0
    reason: str = ""


@dataclass
class Reconciliation:
    """Computed vs logged cost for one model, over the calls that logged a cost.

    ``diagnosis`` (with a price function) fits the rates the logged costs imply and says
    which bucket disagrees and which side is more likely wrong (:mod:`.reconcile`).
    """

    model: str
    calls: int
    computed_mc: int
    logged_mc: int
    diff_pct: float
    disagrees: bool
    diagnosis: Diagnosis | None = None


@dataclass
class CapWhatIf:
    """Reservation if each agent's output were capped at ``cap`` tokens (its largest output, rounded up to 256).

    Computed over the calls that recorded their requested max_tokens.
    """

    agent: str
    calls: int
    cap_tokens: int
    reserved_requested_mc: int
    reserved_capped_mc: int
    settled_mc: int
    ceiling_misses: int


@dataclass
class Headroom:
    """Money reserved vs settled over calls that recorded their requested max_tokens.

    Attributes:
        reserved_requested_mc, reserved_capped_mc: the sums of the by-agent columns
            (ceilings at the requested max_tokens; at each agent's what-if cap).
        reserved_mc: what this replay's policy actually reserved (its own caps applied).
    """

    calls: int
    reserved_mc: int
    settled_mc: int
    median_requested_over_actual_output: float
    by_agent: list[CapWhatIf]
    reserved_requested_mc: int = 0
    reserved_capped_mc: int = 0


@dataclass
class Report:
    """Everything a report shows; JSON-ready through :meth:`to_dict`."""

    calls: int
    admitted_calls: int
    refused_calls: int
    input_tokens: int
    output_tokens: int
    cost_mc: int
    ceiling_misses: int
    runs: int
    p50_run_cost_mc: int
    p95_run_cost_mc: int
    by_run: list[Group]
    by_agent: list[Group]
    by_phase: list[Group]
    by_model: list[Group]
    refusals: list[RefusalGroup]
    by_tenant: list[Group]
    prevented_mc: int
    reconciliation: list[Reconciliation]
    headroom: Headroom | None
    timeline: list[tuple[str, int]]
    budgets: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0
    trips: list[TripEntry] = field(default_factory=list)
    default_bound_calls: int = 0
    default_bound_models: list[str] = field(default_factory=list)
    default_bound_tokens: int = 0
    prevented_fitting_mc: int = 0
    """The part of ``prevented_mc`` in calls refused for their ceiling whose cost fitted the money left."""
    usage_anomalies: list[CeilingMiss] = field(default_factory=list)
    """The ceiling-miss table: usage reported above its call's bounds, per model, tenant, agent and code."""
    by_key: list[Group] = field(default_factory=list)
    """Cost per API key id (empty when no call came with a key: replays, in-process calls)."""
    pnl: dict[str, Any] | None = None
    """The P&L with a fee schedule: ``{"agent": pnl document, "tenant": pnl document}`` (:mod:`.pnl`)."""
    time_range: dict[str, str] = field(default_factory=dict)
    """The settle-time range the report covers: ``{"from", "to"}`` (ISO-8601 UTC, empty when open)."""

    @property
    def input_output_ratio(self) -> float:
        """Input tokens per output token (admitted calls)."""
        return self.input_tokens / self.output_tokens if self.output_tokens else math.inf

    @property
    def top_runs(self) -> list[Group]:
        """The most expensive runs, most expensive first."""
        return self.by_run[:_TOP_RUNS]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (money in millicents, with ``*_usd`` strings beside totals)."""
        out = asdict(self)
        out["input_output_ratio"] = round(self.input_output_ratio, 4)
        out["cost_usd"] = str(Decimal(self.cost_mc) / MC_PER_USD)
        out["prevented_usd"] = str(Decimal(self.prevented_mc) / MC_PER_USD)
        return out


def _percentile(sorted_values: Sequence[int], pct: int) -> int:
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _group(rows: Iterable[ReportRow], key: Callable[[ReportRow], str]) -> list[Group]:
    groups: dict[str, Group] = {}
    for row in rows:
        g = groups.setdefault(key(row), Group(key(row)))
        g.calls += 1
        g.input_tokens += row.input_tokens
        g.output_tokens += row.output_tokens
        g.cost_mc += row.cost_mc
    return sorted(groups.values(), key=lambda g: (-g.cost_mc, g.key))


def _refusals(rows: Iterable[ReportRow]) -> list[RefusalGroup]:
    groups: dict[tuple[str, str, str], RefusalGroup] = {}
    for row in rows:
        assert row.refused_level is not None
        key = (row.refused_level, row.refused_code or "", row.refused_reason)
        g = groups.setdefault(key, RefusalGroup(key[0], key[1], reason=key[2]))
        g.calls += 1
        g.prevented_mc += row.cost_mc
    return sorted(groups.values(), key=lambda g: (-g.calls, g.level, g.code))


PriceFn = Callable[[str, datetime], ModelPrice]
"""(model, moment) -> our table's price of the model then."""


def _reconcile(rows: Iterable[ReportRow], price_fn: PriceFn | None) -> list[Reconciliation]:
    computed: dict[str, int] = defaultdict(int)
    logged: dict[str, int] = defaultdict(int)
    calls: dict[str, list[CallTokens]] = defaultdict(list)
    for row in rows:
        if row.logged_cost_usd is not None:
            calls[row.model].append(CallTokens(row.input_tokens - row.cache_read_tokens - row.cache_write_tokens,
                                               row.cache_read_tokens, row.cache_write_tokens, row.output_tokens,
                                               row.logged_cost_usd, row.ts))
            computed[row.model] += row.cost_mc
            logged[row.model] += usd_to_mc_half_up(row.logged_cost_usd)
    out = []
    for model in sorted(calls):
        diff = (Decimal(computed[model] - logged[model]) * 100 / logged[model]) if logged[model] else Decimal(0)
        diagnosis = None
        if price_fn is not None:
            diagnosis = diagnose(model, calls[model], lambda at, m=model: price_fn(m, at),  # type: ignore[misc]
                                 float(diff), float(_RECONCILE_TOLERANCE_PCT))
        out.append(Reconciliation(model, len(calls[model]), computed[model], logged[model], round(float(diff), 2),
                                  abs(diff) > _RECONCILE_TOLERANCE_PCT, diagnosis))
    return out


CeilingFn = Callable[[ReportRow, int], int]
"""(row, output_tokens_max) -> the ceiling in millicents that row would reserve with that output bound."""


def _cap_what_if(agent: str, rows: Sequence[ReportRow], ceiling_fn: CeilingFn) -> CapWhatIf:
    cap = _CAP_ROUNDING * math.ceil(max(1, *(r.output_tokens for r in rows)) / _CAP_ROUNDING)
    requested = capped = 0
    for r in rows:
        assert r.requested_max_tokens is not None
        requested += ceiling_fn(r, r.requested_max_tokens)
        capped += ceiling_fn(r, min(r.requested_max_tokens, cap))
    return CapWhatIf(agent, len(rows), cap, requested, capped, sum(r.cost_mc for r in rows),
                     sum(1 for r in rows if r.output_tokens > cap))


def _headroom(rows: Sequence[ReportRow], ceiling_fn: CeilingFn | None) -> Headroom | None:
    recorded = [r for r in rows if r.requested_max_tokens is not None]
    if not recorded or ceiling_fn is None:
        return None
    ratios = sorted(r.requested_max_tokens / max(1, r.output_tokens) for r in recorded
                    if r.requested_max_tokens is not None)
    by_agent: dict[str, list[ReportRow]] = defaultdict(list)
    for r in recorded:
        by_agent[r.agent].append(r)
    what_ifs = [_cap_what_if(agent, agent_rows, ceiling_fn) for agent, agent_rows in by_agent.items()]
    return Headroom(
        calls=len(recorded), reserved_mc=sum(r.ceiling_mc for r in recorded),
        settled_mc=sum(r.cost_mc for r in recorded),
        median_requested_over_actual_output=round(ratios[(len(ratios) - 1) // 2], 2),
        by_agent=sorted(what_ifs, key=lambda c: -c.reserved_requested_mc),
        reserved_requested_mc=sum(c.reserved_requested_mc for c in what_ifs),
        reserved_capped_mc=sum(c.reserved_capped_mc for c in what_ifs),
    )


def _timeline(rows: Sequence[ReportRow]) -> list[tuple[str, int]]:
    total = 0
    points = []
    for row in sorted(rows, key=lambda r: r.ts):
        total += row.cost_mc
        points.append((row.ts.isoformat(), total))
    return points


def build_report(rows: Sequence[ReportRow], *, budgets: Sequence[Budget] = (), skipped_lines: int = 0,
                 ceiling_fn: CeilingFn | None = None, events: Iterable[Event] = (),
                 default_bound_tokens: int = 0, price_fn: PriceFn | None = None) -> Report:
    """Aggregate rows into a :class:`Report`.

    Args:
        rows: every call, admitted and refused.
        budgets: the budgets in force (shown as lines on the spend plot).
        skipped_lines: invalid input lines skipped (replay ``--skip-invalid``).
        ceiling_fn: prices a row's ceiling at another output bound; enables the
            reservation-headroom section (replay passes one built on its price book).
        events: the ledger's events, for the defense timeline (:func:`trip_timeline`).
        default_bound_tokens: the output bound replay used for calls with no max_tokens,
            no cap and no known maximum output (rows flagged ``default_output_bound``).
        price_fn: our table's price of a model at a moment; enables the reconciliation's
            fitted rates and diagnosis (:func:`.reconcile.diagnose`).
    """
    admitted = [r for r in rows if r.refused_level is None]
    refused = [r for r in rows if r.refused_level is not None]
    events = list(events)
    callers = {r.reservation_id: (r.tenant, r.agent) for r in admitted if r.reservation_id}
    by_run = _group(admitted, lambda r: r.run)
    run_costs = sorted(g.cost_mc for g in by_run)
    refusal_groups = _refusals(refused)
    return Report(
        calls=len(rows), admitted_calls=len(admitted), refused_calls=len(refused),
        input_tokens=sum(r.input_tokens for r in admitted), output_tokens=sum(r.output_tokens for r in admitted),
        cost_mc=sum(r.cost_mc for r in admitted),
        ceiling_misses=sum(1 for r in admitted if r.cost_mc > r.ceiling_mc),
        runs=len(by_run), p50_run_cost_mc=_percentile(run_costs, 50), p95_run_cost_mc=_percentile(run_costs, 95),
        by_run=by_run, by_agent=_group(admitted, lambda r: r.agent), by_phase=_group(admitted, lambda r: r.phase),
        by_model=_group(admitted, lambda r: r.model), refusals=refusal_groups,
        by_tenant=_group(admitted, lambda r: r.tenant),
        by_key=_group(admitted, lambda r: r.key_id) if any(r.key_id != "-" for r in admitted) else [],
        prevented_mc=sum(g.prevented_mc for g in refusal_groups),
        prevented_fitting_mc=sum(g.prevented_mc for g in refusal_groups if g.reason == CEILING_OVER_REMAINING),
        reconciliation=_reconcile(admitted, price_fn), headroom=_headroom(admitted, ceiling_fn),
        timeline=_timeline(admitted),
        budgets=[{"id": b.id, "level": str(b.level), "scope": b.scope, "period": str(b.period),
                  "timezone": b.timezone, "limit_mc": b.limit_mc} for b in budgets],
        skipped_lines=skipped_lines, trips=trip_timeline(events),
        default_bound_calls=sum(1 for r in rows if r.default_output_bound),
        default_bound_models=sorted({r.model for r in rows if r.default_output_bound}),
        default_bound_tokens=default_bound_tokens,
        usage_anomalies=ceiling_misses(events, callers),
    )


def rows_from_replay(outcomes: Iterable[CallOutcome]) -> list[ReportRow]:
    """Report rows from replay outcomes (with logged costs and requested max_tokens)."""
    return [
        ReportRow(ts=o.record.ts, run=o.record.run_id, agent=o.attribution.agent, phase=o.attribution.phase or "-",
                  model=o.model, input_tokens=o.record.input_tokens, output_tokens=o.record.output_tokens,
                  cost_mc=o.cost_mc, ceiling_mc=o.ceiling_mc, refused_level=o.refused_level,
                  refused_code=None if o.admitted else str(o.code), logged_cost_usd=o.record.logged_cost_usd,
                  requested_max_tokens=o.record.max_output_tokens, default_output_bound=o.default_output_bound,
                  cache_read_tokens=o.record.cache_read_tokens, cache_write_tokens=o.record.cache_write_tokens,
                  tenant=o.attribution.tenant, key_id=o.attribution.key_id or "-",
                  refused_reason=CEILING_OVER_REMAINING if o.ceiling_over_remaining else "")
        for o in outcomes
    ]


def rows_from_ledger(records: Iterable[UsageRecord], refusals: Iterable[Event]) -> list[ReportRow]:
    """Report rows from a ledger's usage log and refusal events.

    A refused call's cost is unknown to a live ledger, so refusal rows carry the
    ceiling it asked for (``requested_mc``) as the spend prevented, an upper bound.
    """
    rows = [
        ReportRow(ts=r.resolved_at, run=r.attribution.conversation or r.attribution.task or "-",
                  agent=r.attribution.agent, phase=r.attribution.phase or "-", model=r.model,
                  input_tokens=r.usage.input_tokens, output_tokens=r.usage.output_tokens, cost_mc=r.cost_mc,
                  ceiling_mc=r.ceiling_mc, tenant=r.attribution.tenant, reservation_id=r.reservation_id,
                  key_id=r.attribution.key_id or "-", cache_read_tokens=r.usage.cache_read_tokens,
                  cache_write_tokens=r.usage.cache_write_tokens)
        for r in records
    ]
    rows += [
        ReportRow(ts=e.ts, run=str(e.detail.get("conversation") or e.detail.get("task") or "-"),
                  agent=str(e.detail.get("agent", "-")), phase=str(e.detail.get("phase") or "-"),
                  model=str(e.detail.get("model", "-")), input_tokens=0, output_tokens=0,
                  cost_mc=int(e.detail.get("requested_mc", 0)), ceiling_mc=int(e.detail.get("requested_mc", 0)),
                  refused_level=e.level or "-", refused_code=e.code, tenant=str(e.detail.get("tenant") or "-"))
        for e in refusals
    ]
    return rows
