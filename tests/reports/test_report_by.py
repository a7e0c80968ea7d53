"""``comptroller report --by ... --from --to`` over a real SQLite ledger: rows, CSV and JSON equal independent sums.

The ledger holds calls of two tenants, each with API keys (and in-process calls without one),
settled at known instants across a month boundary; every expected figure is computed in the
test from the calls it made, never pasted.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.ledger import UsageRecord
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.reports.chargeback import (
    COLUMNS,
    ChargebackBy,
    TimeRange,
    chargeback_csv,
    chargeback_rows,
    parse_instant,
)
from comptroller.storage.memory import MemoryStore
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import reserve_request

START = datetime(2026, 2, 28, 22, 0, tzinfo=UTC)
# (tenant, agent, key_id, conversation, task, model, hours after START, input, output, cache_read, cost_mc)
CALLS = [
    ("acme", "writer", "k_acme_1", "c1", "t1", "gpt-4o-mini", 0, 1000, 200, 100, 150),
    ("acme", "writer", "k_acme_1", "c1", "t1", "gpt-4o-mini", 1, 2000, 300, 0, 270),
    ("acme", "judge", "k_acme_2", "c1", None, "gpt-4o", 2, 500, 50, 0, 900),  # 00:00 on 03-01: in March
    ("acme", "judge", None, "c2", None, "gpt-4o", 3, 700, 70, 0, 1100),
    ("globex", "writer", "k_glob_1", "c1", "t9", "gpt-4o-mini", 1, 3000, 400, 500, 410),
    ("globex", "writer", "k_glob_1", "c1", "t9", "gpt-4o", 26, 100, 10, 0, 95),
]


def _fill(store: SQLiteStore | MemoryStore) -> None:
    for i, (tenant, agent, key_id, conversation, task, model, hours, inp, out, cached, cost) in enumerate(CALLS):
        who = Attribution(namespace="prod", tenant=tenant, agent=agent, conversation=conversation, task=task,
                          key_id=key_id)
        at = START + timedelta(hours=hours)
        held = store.reserve(reserve_request(f"call-{i}", 10_000, who=who, model=model), at)
        assert held.reservation is not None
        store.settle(held.reservation.id, Usage(inp, out, cache_read_tokens=cached), cost, at)


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    path = tmp_path / "ledger.db"
    store = SQLiteStore(str(path))
    _fill(store)
    store.close()
    return f"sqlite:///{path}"


def _expected(by: str, since: datetime | None = None, until: datetime | None = None
              ) -> dict[tuple[str, str], list[int]]:
    """Independent sums: (tenant or '', group) -> [calls, input, output, cache_read, cost]."""
    field = {"tenant": 0, "agent": 1, "key": 2, "conversation": 3, "task": 4, "model": 5}[by]
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for call in CALLS:
        at = START + timedelta(hours=call[6])
        if (since is not None and at < since) or (until is not None and at >= until):
            continue
        group = out[("" if by == "model" else call[0], call[field] or "-")]
        for i, value in enumerate((1, *call[7:11])):
            group[i] += value
    return dict(out)


@pytest.mark.parametrize("by", [b.value for b in ChargebackBy])
def test_report_by_writes_csv_and_json_rows_equal_to_independent_sums(ledger: str, tmp_path: Path, by: str) -> None:
    """Every --by writes one CSV and one JSON row per group, with the stable columns and the sums of its calls."""
    csv_path, json_path = tmp_path / "rows.csv", tmp_path / "rows.json"
    result = CliRunner().invoke(app, ["report", "--db", ledger, "--by", by, "--csv", str(csv_path),
                                      "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    got = {(r["tenant"], r["group"]): [int(r[c]) for c in ("calls", "input_tokens", "output_tokens",
                                                           "cache_read_tokens", "cost_mc")] for r in rows}
    assert got == _expected(by)
    document = json.loads(json_path.read_text(encoding="utf-8"))
    assert document["by"] == by and document["columns"] == list(COLUMNS)
    assert [list(r) for r in document["rows"]] == [list(COLUMNS)] * len(rows)
    assert document["total"]["cost_mc"] == sum(c[10] for c in CALLS)
    assert sum(int(r["cost_mc"]) for r in rows) == document["total"]["cost_mc"]


def test_report_by_key_separates_keys_and_names_calls_without_one(ledger: str, tmp_path: Path) -> None:
    """Spend per key: each key id is its own row under its tenant; in-process calls are the key '-'."""
    out = tmp_path / "keys.json"
    result = CliRunner().invoke(app, ["report", "--db", ledger, "--by", "key", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {(r["tenant"], r["group"]): r for r in json.loads(out.read_text(encoding="utf-8"))["rows"]}
    assert set(rows) == {("acme", "k_acme_1"), ("acme", "k_acme_2"), ("acme", "-"), ("globex", "k_glob_1")}
    no_key = [c for c in CALLS if c[0] == "acme" and c[2] is None]
    assert rows[("acme", "-")]["cost_mc"] == sum(c[10] for c in no_key)
    assert "Spend by key" in result.output


def test_from_is_inclusive_and_to_exclusive_in_utc(ledger: str, tmp_path: Path) -> None:
    """--from 2026-03-01 keeps the call settled at 00:00 UTC that day; --to 2026-03-01 leaves it out."""
    march, feb = tmp_path / "march.json", tmp_path / "feb.json"
    for args, path in ((["--from", "2026-03-01"], march), (["--to", "2026-03-01T00:00:00Z"], feb)):
        result = CliRunner().invoke(app, ["report", "--db", ledger, "--by", "tenant", *args, "--json", str(path)])
        assert result.exit_code == 0, result.output
    boundary = datetime(2026, 3, 1, tzinfo=UTC)
    for path, since, until in ((march, boundary, None), (feb, None, boundary)):
        document = json.loads(path.read_text(encoding="utf-8"))
        got = {(r["tenant"], r["group"]): [r["calls"], r["input_tokens"], r["output_tokens"], r["cache_read_tokens"],
                                           r["cost_mc"]] for r in document["rows"]}
        assert got == _expected("tenant", since, until)
    assert json.loads(march.read_text(encoding="utf-8"))["from"] == "2026-03-01T00:00:00+00:00"


def test_an_offset_instant_is_read_in_utc(ledger: str) -> None:
    """--to 2026-03-01T01:00+01:00 is 00:00 UTC: the same range as --to 2026-03-01."""
    assert parse_instant("2026-03-01T01:00+01:00", "--to") == datetime(2026, 3, 1, tzinfo=UTC)
    store = SQLiteStore(ledger.removeprefix("sqlite:///"))
    try:
        records = list(store.usage_records())
    finally:
        store.close()
    a = chargeback_rows(records, ChargebackBy.TENANT, TimeRange.parse(None, "2026-03-01T01:00+01:00"))
    b = chargeback_rows(records, ChargebackBy.TENANT, TimeRange.parse(None, "2026-03-01"))
    assert a == b


def test_empty_range_and_bad_instants_are_errors(ledger: str, tmp_path: Path) -> None:
    """--to not after --from, a malformed instant, and --csv without --by exit 2 naming the option."""
    runner = CliRunner()
    cases = [(["--by", "tenant", "--from", "2026-03-02", "--to", "2026-03-01"], "--to"),
             (["--by", "tenant", "--from", "March"], "--from"),
             (["--csv", str(tmp_path / "x.csv")], "--by")]
    for args, named in cases:
        result = runner.invoke(app, ["report", "--db", ledger, *args])
        assert result.exit_code == 2, (args, result.output)
        assert named in result.output
    assert not (tmp_path / "x.csv").exists()


def test_full_report_with_a_range_counts_only_its_calls(ledger: str, tmp_path: Path) -> None:
    """The report without --by, over a range, totals the calls settled in it and names the range."""
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["report", "--db", ledger, "--from", "2026-03-01", "--json", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text(encoding="utf-8"))
    boundary = datetime(2026, 3, 1, tzinfo=UTC)
    assert document["cost_mc"] == sum(c[10] for c in CALLS if START + timedelta(hours=c[6]) >= boundary)
    assert document["time_range"] == {"from": "2026-03-01T00:00:00+00:00", "to": ""}
    assert {g["key"] for g in document["by_key"]} == {"k_acme_2", "-", "k_glob_1"}
    assert "(inclusive)" in result.output


_MOMENTS = st.integers(min_value=0, max_value=72)


@settings(max_examples=60, deadline=None)
@given(cut=_MOMENTS, by=st.sampled_from(list(ChargebackBy)))
def test_two_adjacent_ranges_add_up_to_their_union(cut: int, by: ChargebackBy) -> None:
    """[a, cut) and [cut, b) hold every call of [a, b) exactly once: the costs and calls add up per group."""
    store = MemoryStore()
    _fill(store)
    records: list[UsageRecord] = list(store.usage_records())
    middle = START + timedelta(hours=cut)
    whole = {(r.tenant, r.group): (r.calls, r.cost_mc) for r in chargeback_rows(records, by)}
    left = chargeback_rows(records, by, TimeRange(None, middle))
    right = chargeback_rows(records, by, TimeRange(middle, None))
    summed: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in (*left, *right):
        summed[(r.tenant, r.group)][0] += r.calls
        summed[(r.tenant, r.group)][1] += r.cost_mc
    assert {k: tuple(v) for k, v in summed.items()} == whole
    assert chargeback_csv(left, by, TimeRange(None, middle)).splitlines()[0] == ",".join(COLUMNS)
