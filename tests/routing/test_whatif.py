"""What-if re-pricing: agent beats phase beats model; totals equal a hand computation; labelled cost only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.routing import RoutingConfigError
from comptroller.domain.routing.whatif import ModelMapping

POLICY = """
[prices."cheap"]
input_mtok = "1"
output_mtok = "2"
[prices."dear"]
input_mtok = "10"
output_mtok = "20"
[prices."mid"]
input_mtok = "4"
output_mtok = "8"
"""


def test_mapping_precedence() -> None:
    """An agent's mapping wins over its phase's, which wins over the model's; otherwise unchanged."""
    mapping = ModelMapping(by_agent={"CEO": "a"}, by_phase={"Coding": "p"}, by_model={"dear": "m"})
    assert mapping.target(agent="CEO", phase="Coding", model="dear") == ("a", "agent 'CEO'")
    assert mapping.target(agent="x", phase="Coding", model="dear") == ("p", "phase 'Coding'")
    assert mapping.target(agent="x", phase=None, model="dear") == ("m", "model 'dear'")
    assert mapping.target(agent="x", phase=None, model="other") == ("other", "unchanged")
    with pytest.raises(RoutingConfigError):
        ModelMapping(by_agent={"": "a"})


def test_what_if_command_totals_equal_a_hand_computation(tmp_path: Path) -> None:
    """Two dear calls, one mapped to mid by phase: $ (1000x10 + 100x20) x2 -> one at mid; the page says cost only."""
    (tmp_path / "p.toml").write_text(POLICY)
    rows = [{"run_id": "r", "seq": i, "ts": "2025-01-01T00:00:00Z", "agent": "Coder", "model": "dear",
             "phase": phase, "input_tokens": 1_000, "output_tokens": 100} for i, phase in ((1, "Coding"), (2, "Test"))]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = CliRunner().invoke(app, ["what-if", str(tmp_path / "t.jsonl"), "--policy", str(tmp_path / "p.toml"),
                                      "--phase", "Coding=mid"], terminal_width=200)
    assert result.exit_code == 0, result.output
    dear_call_usd = (1_000 * 10 + 100 * 20) / 1_000_000   # $0.012
    mid_call_usd = (1_000 * 4 + 100 * 8) / 1_000_000      # $0.0048
    assert f"total ${2 * dear_call_usd:.5f} -> ${dear_call_usd + mid_call_usd:.5f}" in result.output
    assert "cost only" in result.output


def test_what_if_command_rejects_a_malformed_mapping(tmp_path: Path) -> None:
    """--agent without NAME=MODEL exits 2 saying what to write."""
    (tmp_path / "t.jsonl").write_text("")
    result = CliRunner().invoke(app, ["what-if", str(tmp_path / "t.jsonl"), "--agent", "Coder"])
    assert result.exit_code == 2 and "NAME=MODEL" in result.output
