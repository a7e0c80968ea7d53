"""Replay into a SQLite ledger: idempotent on a second run, and `comptroller report` agrees with replay."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from comptroller.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "data" / "traces" / "chatdev_warehouse.jsonl")
POLICY = str(ROOT / "policies" / "chatdev.toml")
runner = CliRunner()


def _replay(db: str, out: Path) -> dict[str, object]:
    result = runner.invoke(app, ["replay", SAMPLE, "--policy", POLICY, "--db", db, "--json", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_replaying_twice_into_one_ledger_counts_nothing_twice(tmp_path: Path) -> None:
    """A second replay of the same file into the same database settles nothing new and reports the same totals."""
    db = f"sqlite:///{tmp_path}/ledger.db"
    first = _replay(db, tmp_path / "a.json")
    second = _replay(db, tmp_path / "b.json")
    assert second["cost_mc"] == first["cost_mc"]
    assert second["refused_calls"] == first["refused_calls"]
    report = runner.invoke(app, ["report", "--db", db, "--json", str(tmp_path / "r.json")])
    assert report.exit_code == 0, report.output
    ledger = json.loads((tmp_path / "r.json").read_text())
    assert ledger["cost_mc"] == first["cost_mc"]
    assert ledger["admitted_calls"] == first["admitted_calls"]


def test_report_over_the_ledger_shows_refusals_by_level(tmp_path: Path) -> None:
    """`comptroller report` lists the refusals the replay recorded, by level and code."""
    db = f"sqlite:///{tmp_path}/ledger.db"
    replayed = _replay(db, tmp_path / "a.json")
    result = runner.invoke(app, ["report", "--db", db, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    ledger = json.loads((tmp_path / "r.json").read_text())
    replay_levels = {(g["level"], g["code"]): g["calls"] for g in replayed["refusals"]}  # type: ignore[union-attr]
    ledger_levels = {(g["level"], g["code"]): g["calls"] for g in ledger["refusals"]}
    assert ledger_levels == replay_levels
    assert replay_levels


def test_malformed_line_names_file_line_and_field(tmp_path: Path) -> None:
    """A bad token count stops the replay with file, line and field named; --skip-invalid counts it instead."""
    lines = Path(SAMPLE).read_text().splitlines()[:5]
    bad = json.loads(lines[2])
    bad["output_tokens"] = -3
    lines[2] = json.dumps(bad)
    trace = tmp_path / "bad.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["replay", str(trace), "--policy", POLICY])
    assert result.exit_code == 2
    assert f"{trace}:3" in result.output and "output_tokens" in result.output
    skipped = runner.invoke(app, ["replay", str(trace), "--policy", POLICY, "--skip-invalid",
                                  "--json", str(tmp_path / "s.json")])
    assert skipped.exit_code == 0, skipped.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["skipped_lines"] == 1 and report["calls"] == 4


def test_unknown_model_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    """A late record whose model has no price fails with the model named, before any call reaches the ledger."""
    lines = Path(SAMPLE).read_text().splitlines()[:50]
    record = json.loads(lines[-1])
    record["model"], record["x_model_resolved"] = "gpt-3.5-turbo-17k", None
    lines[-1] = json.dumps(record)
    trace = tmp_path / "unknown.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    db = f"sqlite:///{tmp_path}/ledger.db"
    result = runner.invoke(app, ["replay", str(trace), "--policy", POLICY, "--db", db])
    assert result.exit_code == 2
    assert "gpt-3.5-turbo-17k" in result.output and "gpt-3.5-turbo-16k" in result.output
    assert "[prices." in result.output
    report = runner.invoke(app, ["report", "--db", db, "--json", str(tmp_path / "r.json")])
    assert report.exit_code == 0, report.output
    assert json.loads((tmp_path / "r.json").read_text())["calls"] == 0


def test_budget_cli_sets_lists_and_rejects_bad_limits(tmp_path: Path) -> None:
    """`budget set` stores a budget that `budget list` shows; a negative limit or unknown period writes nothing."""
    db = f"sqlite:///{tmp_path}/ledger.db"
    ok = runner.invoke(app, ["budget", "set", "--level", "agent", "--namespace", "replay", "--tenant", "chatdev",
                             "--agent", "Programmer", "--limit-usd", "2.50", "--period", "day", "--db", db])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["budget", "set", "--level", "agent", "--limit-usd", "-1", "--db", db])
    assert bad.exit_code == 2 and "limit" in bad.output
    unknown = runner.invoke(app, ["budget", "set", "--level", "agent", "--limit-usd", "1", "--period", "fortnight",
                                  "--db", db])
    assert unknown.exit_code != 0
    listed = runner.invoke(app, ["budget", "list", "--db", db], env={"COLUMNS": "200"})
    assert listed.exit_code == 0
    assert "agent:day:replay|chatdev|Programmer" in listed.output
    assert listed.output.count("agent:") == 1


def test_prices_show_prints_rates_from_genai_prices_and_overrides() -> None:
    """`prices show` prints a known model's rates, and an override file's rates for a local model."""
    known = runner.invoke(app, ["prices", "show", "gpt-4o-mini"], env={"COLUMNS": "200"})
    assert known.exit_code == 0 and "$0.15" in known.output and "$0.6" in known.output
    local = runner.invoke(app, ["prices", "show", "ModelType.LLAMA_3", "--prices", POLICY], env={"COLUMNS": "200"})
    assert local.exit_code == 0 and "llama-3-local" in local.output
