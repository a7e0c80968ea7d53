"""``comptroller replay --from --to`` replays only the calls recorded in the range (UTC, from inclusive, to exclusive).

Expected totals are computed in the test from the trace's tokens and the policy's rates.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from comptroller.cli.main import app

POLICY = """
output_cap_tokens = 1024
[prices."house-model"]
input_mtok = "1000"
output_mtok = "2000"
"""
START = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
CALLS = [(0, 100, 10), (1, 200, 20), (2, 300, 30), (25, 400, 40)]  # (hours after START, input, output)


def _trace(tmp_path: Path) -> tuple[Path, Path]:
    trace, policy = tmp_path / "t.jsonl", tmp_path / "p.toml"
    trace.write_text("".join(json.dumps({"run_id": "acme/run-1", "seq": i + 1,
                                         "ts": (START + timedelta(hours=h)).isoformat(), "agent": "writer",
                                         "model": "house-model", "input_tokens": inp, "output_tokens": out}) + "\n"
                             for i, (h, inp, out) in enumerate(CALLS)), encoding="utf-8")
    policy.write_text(POLICY, encoding="utf-8")
    return trace, policy


def test_replay_keeps_only_the_calls_recorded_in_the_range(tmp_path: Path) -> None:
    """--from 2026-03-02 (00:00 UTC, the second call's instant) --to 2026-03-03 replays the 2nd and 3rd calls."""
    trace, policy = _trace(tmp_path)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["replay", str(trace), "--policy", str(policy), "--from", "2026-03-02",
                                      "--to", "2026-03-03", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    since, until = datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC)
    kept = [(inp, o) for h, inp, o in CALLS if since <= START + timedelta(hours=h) < until]
    assert len(kept) == 2
    assert report["calls"] == len(kept)
    assert report["cost_mc"] == sum((inp * 1000 + o * 2000) * 100_000 // 1_000_000 for inp, o in kept)
    assert report["time_range"] == {"from": since.isoformat(), "to": until.isoformat()}


def test_a_range_without_calls_is_an_error_naming_it(tmp_path: Path) -> None:
    """A range that holds no recorded call exits 2 and says which range; an inverted range names --to."""
    trace, policy = _trace(tmp_path)
    result = CliRunner().invoke(app, ["replay", str(trace), "--policy", str(policy), "--from", "2027-01-01"])
    assert result.exit_code == 2 and "2027-01-01T00:00:00+00:00 (inclusive)" in " ".join(result.output.split())
    inverted = CliRunner().invoke(app, ["replay", str(trace), "--from", "2026-03-03", "--to", "2026-03-02"])
    assert inverted.exit_code == 2 and "--to" in inverted.output
