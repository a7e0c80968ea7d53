"""Report wording: label aliases, the ceiling-over-remaining refusal reason, headroom totals and the HTML tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.money import format_usd
from comptroller.reports.html import usd_display

RATE_MTOK = 100  # USD per million tokens: one token costs 10 mc
MC_PER_TOKEN = RATE_MTOK * 100_000 // 1_000_000
LIMIT_MC = 1000
# (phase, agent, input, output, max_tokens)
CALLS = [("Coding", "coder", 10, 10, 20), ("CODING", "Coder", 10, 10, 100), ("Coding", "coder", 50, 50, 60)]


def _run(tmp_path: Path, *extra: str) -> tuple[dict[str, object], str]:
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({
        "run_id": "acme/r1", "seq": i, "ts": f"2025-06-0{i}T10:00:00Z", "agent": agent, "phase": phase,
        "model": "m", "input_tokens": tokens_in, "output_tokens": tokens_out, "x_max_output_tokens": max_tokens,
    }) + "\n" for i, (phase, agent, tokens_in, tokens_out, max_tokens) in enumerate(CALLS, start=1)))
    policy = tmp_path / "p.toml"
    policy.write_text(f'[prices."m"]\ninput_mtok = "{RATE_MTOK}"\noutput_mtok = "{RATE_MTOK}"\n'
                      '[label_aliases.phase]\nCODING = "Coding"\n[label_aliases.agent]\nCoder = "coder"\n'
                      f'[[budgets]]\nlevel = "conversation"\nlimit_usd = "{LIMIT_MC / 100_000}"\nperiod = "total"\n'
                      '[[budgets]]\nlevel = "namespace"\nlimit_usd = "100"\nperiod = "day"\n')
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["replay", str(trace), "--policy", str(policy), "--json", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), " ".join(result.output.split())


def test_label_aliases_merge_phases_and_agents(tmp_path: Path) -> None:
    """CODING and Coding are one phase, Coder and coder one agent, once the policy aliases them."""
    report, _ = _run(tmp_path)
    assert [g["key"] for g in report["by_phase"]] == ["Coding"]
    assert [g["key"] for g in report["by_agent"]] == ["coder"]


def test_ceiling_over_remaining_is_its_own_reason(tmp_path: Path) -> None:
    """A call whose cost fitted the money left but whose ceiling did not is refused with its own reason."""
    report, _ = _run(tmp_path)
    settled = (CALLS[0][2] + CALLS[0][3]) * MC_PER_TOKEN
    remaining = LIMIT_MC - settled
    want = {}
    for _, _, tokens_in, tokens_out, _ in CALLS[1:]:  # both ceilings exceed what is left
        cost = (tokens_in + tokens_out) * MC_PER_TOKEN
        reason = "ceiling larger than the remaining budget" if cost <= remaining else ""
        want[reason] = want.get(reason, 0) + 1
    assert {g["reason"]: g["calls"] for g in report["refusals"]} == want
    assert len(want) == 2  # the trace is built so that one refusal of each kind happens
    fitting = sum((tokens_in + tokens_out) * MC_PER_TOKEN for _, _, tokens_in, tokens_out, _ in CALLS[1:]
                  if (tokens_in + tokens_out) * MC_PER_TOKEN <= remaining)
    assert report["prevented_fitting_mc"] == fitting


def test_headroom_heading_totals_its_columns(tmp_path: Path) -> None:
    """The headroom heading's reserved figures are the sums of its columns."""
    report, text = _run(tmp_path)
    headroom = report["headroom"]
    assert headroom["reserved_requested_mc"] == sum(a["reserved_requested_mc"] for a in headroom["by_agent"])
    assert f"{format_usd(headroom['reserved_requested_mc'])} reserved as requested" in text
    assert f"{format_usd(headroom['reserved_capped_mc'])} with the caps below" in text


def test_html_has_the_terminal_columns_dates_and_readable_money(tmp_path: Path) -> None:
    """The HTML tables carry tokens and shares, a tenant table, a date axis for the daily chart, and rounded money."""
    page = tmp_path / "r.html"
    report, _ = _run(tmp_path, "--html", str(page))
    html = page.read_text()
    for heading in ("Cost by tenant", "Cost by agent", "Cost by model", "Cost by phase"):
        table = re.search(f"<h2>{heading}</h2><table><tr>(.*?)</tr>", html)
        assert table is not None, heading
        assert "<th>input tok</th><th>output tok</th><th>cost</th><th>share</th>" in table.group(1)
    assert f"<td>{usd_display(report['cost_mc'])}</td><td>100.0%</td>" in html
    assert '"type":"date"' in html


def test_usd_display_precision() -> None:
    """Money in the HTML: whole dollars from $100, cents from $1, two significant digits below."""
    assert [usd_display(mc) for mc in (0, 628, 17_000, 123_456, 12_345_678, -628)] == [
        "$0", "$0.0063", "$0.17", "$1.23", "$123", "-$0.0063"]
