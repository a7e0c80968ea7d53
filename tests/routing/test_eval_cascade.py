"""eval-cascade on the shipped data: oracle and always-strong equal an independent count; the CLI writes its files."""

from __future__ import annotations

import csv
import json
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from genai_prices import data_snapshot
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.evaluation.cascade_eval import PRICE_ALIASES, PRICED_AT, CascadeEvaluation, evaluate_cascade
from comptroller.evaluation.gsm8k import load_gsm8k
from comptroller.prices import PriceBook

DATA = Path(__file__).resolve().parents[2] / "data" / "routing"
CHEAP, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def _rates(model_id: str) -> tuple[Decimal, Decimal]:
    _, info = data_snapshot.get_snapshot().find_provider_model(model_id, None, None, None)
    raw = info.get_prices(PRICED_AT)
    return Decimal(raw.input_mtok), Decimal(raw.output_mtok)


def _cost_mc(rates: tuple[Decimal, Decimal], prompt: str, answer: str) -> int:
    tokens_in, tokens_out = (-(-len(t.encode("utf-8")) // 4) for t in (prompt, answer))
    usd = (tokens_in * rates[0] + tokens_out * rates[1]) / 1_000_000
    return int((usd * 100_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.fixture(scope="module")
def evaluation() -> CascadeEvaluation:
    """The evaluation on the shipped data (contaminated questions dropped), with few random draws."""
    return evaluate_cascade(load_gsm8k(DATA), prices=PriceBook(aliases=PRICE_ALIASES), seeds=3)


def test_oracle_and_always_strong_equal_an_independent_count(evaluation: CascadeEvaluation) -> None:
    """Counted straight from the CSV with genai-prices' raw rates: the same correct answers and millicents."""
    contaminated = {json.loads(line)["eval_prompt"] for line in (DATA / "gsm8k_contaminated_prompts.jsonl").open()}
    shots = [json.loads(line) for line in (DATA / "gsm8k_fewshot_train8.jsonl").open()]
    prefix = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    cheap_rates, strong_rates = _rates("mixtral-8x7b"), _rates(STRONG)
    csv.field_size_limit(sys.maxsize)
    n = strong_ok = oracle_ok = strong_mc = oracle_mc = 0
    with (DATA / "gsm8k_responses.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["prompt"] in contaminated:
                continue
            prompt = f"{prefix}Question: {row['prompt']}\nAnswer:"
            cheap_ok, strong_right = row[CHEAP] == "True", row[STRONG] == "True"
            cheap_cost = _cost_mc(cheap_rates, prompt, row[f"{CHEAP}_response"])
            strong_cost = _cost_mc(strong_rates, prompt, row[f"{STRONG}_response"])
            n += 1
            strong_ok += strong_right
            strong_mc += strong_cost
            oracle_ok += cheap_ok or strong_right
            oracle_mc += cheap_cost + (0 if cheap_ok else strong_cost)
    strong, oracle = evaluation.strategy("always-strong"), evaluation.strategy("oracle")
    assert evaluation.questions == n == 1_319 - len(contaminated)
    assert (strong.correct, strong.cost_mc) == (strong_ok, strong_mc)
    assert (oracle.correct, oracle.cost_mc) == (oracle_ok, oracle_mc)
    assert evaluation.target_accuracy == pytest.approx(0.95 * strong_ok / n)


def test_gate_figures_are_consistent_with_the_cascade_they_drive(evaluation: CascadeEvaluation) -> None:
    """'any gate' failed exactly the questions the all-gates cascade escalated; precision and recall agree."""
    any_gate = next(g for g in evaluation.gates if g.gate == "any gate")
    cascade = evaluation.strategy("cascade, all gates")
    cheap = evaluation.strategy("always-cheap")
    assert any_gate.fails == cascade.escalated
    assert any_gate.wrong == cheap.questions - cheap.correct
    assert any_gate.precision == any_gate.caught / any_gate.fails
    assert evaluation.routing.tiers[1].reached == cascade.escalated


def test_the_curve_runs_from_the_gates_alone_to_more_escalation(evaluation: CascadeEvaluation) -> None:
    """The first curve point is the all-gates cascade; tighter length limits never escalate fewer questions."""
    first = evaluation.curve[0]
    assert first.max_chars is None
    assert first.strategy.escalated == evaluation.strategy("cascade, all gates").escalated
    escalated = [p.strategy.escalated for p in evaluation.curve]
    assert escalated == sorted(escalated)


def test_eval_cascade_command_prints_and_writes_json_and_html(tmp_path: Path) -> None:
    """The CLI prints the headline, and its JSON carries the same always-strong accuracy as the library."""
    result = CliRunner().invoke(app, ["eval-cascade", "--seeds", "2", "--json", str(tmp_path / "e.json"),
                                      "--html", str(tmp_path / "e.html")])
    assert result.exit_code == 0, result.output
    assert "RouteLLM" in result.output and "cross-validated" in result.output
    figures = json.loads((tmp_path / "e.json").read_text())
    strong = next(s for s in figures["strategies"] if s["name"] == "always-strong")
    assert strong["accuracy"] == pytest.approx(figures["target_accuracy"] / 0.95)
    page = (tmp_path / "e.html").read_text()
    assert "plotly" in page and "<script src=\"http" not in page


def test_eval_cascade_command_names_a_missing_data_folder(tmp_path: Path) -> None:
    """A folder without the files exits 2 with a message naming the missing file."""
    result = CliRunner().invoke(app, ["eval-cascade", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "gsm8k_responses.csv" in result.output
