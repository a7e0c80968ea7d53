"""`comptroller report` lists the usage anomalies (the ceiling-miss table) in the terminal, JSON and HTML."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from comptroller.bootstrap import build_engine
from comptroller.cli.main import app
from comptroller.config import Policy
from comptroller.domain.usage import Usage
from comptroller.sdk.context import CallContext
from comptroller.sdk.governor import Comptroller

CHEAP, DEAR = "cheap-model", "dear-model"
INPUT_MAX, MAX_TOKENS = 40, 50
# (agent, model, reported usage): over the output bound twice, over the input bound once, one within bounds
CALLS = [("writer", CHEAP, Usage(input_tokens=10, output_tokens=10_000)),
         ("writer", CHEAP, Usage(input_tokens=10, output_tokens=MAX_TOKENS + 7)),
         ("critic", DEAR, Usage(input_tokens=INPUT_MAX + 900, output_tokens=5)),
         ("critic", DEAR, Usage(input_tokens=INPUT_MAX, output_tokens=MAX_TOKENS))]
runner = CliRunner()


def _ledger(tmp_path: Path) -> str:
    """A SQLite ledger with the CALLS settled through the SDK's metered path (which records the anomalies)."""
    db = f"sqlite:///{tmp_path}/ledger.db"
    policy = Policy.model_validate({"namespace": "test", "prices": {
        CHEAP: {"input_mtok": "1", "output_mtok": "2"}, DEAR: {"input_mtok": "10", "output_mtok": "20"}}})
    comptroller = Comptroller(build_engine(db_url=db, policy=policy), namespace="test", tenant="acme")
    for agent, model, usage in CALLS:
        admission = comptroller.admit(context=comptroller.context(call=CallContext(agent=agent)), model=model,
                                      messages=None, input_tokens_max=INPUT_MAX, max_tokens=MAX_TOKENS)
        assert admission.reservation is not None
        comptroller.settle(admission.reservation, usage)
    comptroller.engine.store.close()
    return db


def _expected() -> list[dict[str, object]]:
    """The table derived from CALLS: one row per (model, agent, bucket) above its bound, most excess first."""
    rows: dict[tuple[str, str, str], dict[str, object]] = {}
    for agent, model, usage in CALLS:
        for code, reported, bound in (("input_above_bound", usage.input_tokens, INPUT_MAX),
                                      ("output_above_bound", usage.output_tokens, MAX_TOKENS)):
            if reported > bound:
                row = rows.setdefault((model, agent, code), {"model": model, "tenant": "acme", "agent": agent,
                                                             "code": code, "calls": 0, "reported_tokens": 0,
                                                             "bound_tokens": 0, "excess_tokens": 0})
                row["calls"] += 1  # type: ignore[operator]
                row["reported_tokens"] += reported  # type: ignore[operator]
                row["bound_tokens"] += bound  # type: ignore[operator]
                row["excess_tokens"] += reported - bound  # type: ignore[operator]
    return sorted(rows.values(), key=lambda r: -r["excess_tokens"])  # type: ignore[operator]


def test_report_lists_usage_anomalies_per_model_and_agent(tmp_path: Path) -> None:
    """The JSON report's usage_anomalies equal the counts and excess tokens derived from the calls made."""
    db = _ledger(tmp_path)
    result = runner.invoke(app, ["report", "--db", db, "--json", str(tmp_path / "r.json"),
                                 "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["usage_anomalies"] == _expected()
    assert "Ceiling misses" in result.output
    for row in _expected():
        assert f"{row['excess_tokens']:,}" in result.output
    page = (tmp_path / "r.html").read_text()
    assert "Ceiling misses" in page and f"{_expected()[0]['excess_tokens']:,}" in page


def test_a_ledger_without_anomalies_shows_no_table(tmp_path: Path) -> None:
    """A call within its bounds records no anomaly: the report's table is empty and not printed."""
    db = f"sqlite:///{tmp_path}/ledger.db"
    policy = Policy.model_validate({"namespace": "test", "prices": {CHEAP: {"input_mtok": "1", "output_mtok": "2"}}})
    comptroller = Comptroller(build_engine(db_url=db, policy=policy), namespace="test", tenant="acme")
    admission = comptroller.admit(context=comptroller.context(call=CallContext(agent="writer")), model=CHEAP,
                                  messages=None, input_tokens_max=INPUT_MAX, max_tokens=MAX_TOKENS)
    assert admission.reservation is not None
    comptroller.settle(admission.reservation, Usage(input_tokens=INPUT_MAX, output_tokens=MAX_TOKENS))
    comptroller.engine.store.close()
    result = runner.invoke(app, ["report", "--db", db, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["usage_anomalies"] == []
    assert "Ceiling misses" not in result.output
