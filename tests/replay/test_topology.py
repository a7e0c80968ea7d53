"""The topology simulator's figures for N = 1..16 equal closed forms derived from its stated assumptions."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.simulate.topology import Shape, claims, simulate

RATE_IN, RATE_OUT = Decimal("0.15"), Decimal("0.60")


def closed_form(topology: str, n: int, s: Shape) -> tuple[int, int, int]:
    """(calls, input, output) written directly from the module docstring's rules."""
    base, o, r, b = s.system_tokens + s.task_tokens, s.output_tokens, s.rounds, s.branching
    if topology == "single":
        return 1, base, o
    if topology == "star":
        return n + 2, (n + 2) * base + (2 * n + 1) * o, (n + 2) * o
    if topology == "pipeline":
        return n, n * base + o * n * (n - 1) // 2, n * o
    if topology == "debate":
        return r * n, r * n * base + (r - 1) * n * (n - 1) * o, r * n * o
    managers = math.ceil((n - 1) / b)
    leaves = n - managers
    calls = 2 * managers + leaves
    if n == 1:
        return 1, base, o
    extra = 2 * (managers - 1) + leaves + managers + (n - 1)  # instructions, own plans, children's answers
    return calls, calls * base + extra * o, calls * o


def _cost_mc(tokens_in: int, tokens_out: int) -> int:
    usd = (tokens_in * RATE_IN + tokens_out * RATE_OUT) / 1_000_000
    return int((usd * 100_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.mark.parametrize("shape", [Shape(), Shape(2000, 300, 250, rounds=2, branching=2), Shape(0, 0, 100, 1, 5)])
def test_n_1_to_16_equal_the_closed_forms(shape: Shape) -> None:
    """Calls, tokens and cost of every topology for N = 1..16 equal the closed forms."""
    rows = simulate(16, shape, input_mtok=RATE_IN, output_mtok=RATE_OUT)
    assert len(rows) == 5 * 16
    single = sum(closed_form("single", 1, shape)[1:])
    for row in rows:
        calls, tokens_in, tokens_out = closed_form(row.topology, row.agents, shape)
        assert (row.calls, row.input_tokens, row.output_tokens) == (calls, tokens_in, tokens_out), row
        assert row.cost_mc == _cost_mc(tokens_in, tokens_out)
        assert row.ratio_to_single == round((tokens_in + tokens_out) / single, 2)


@given(n=st.integers(1, 200), branching=st.integers(1, 8), out=st.integers(0, 2000))
def test_hierarchy_closed_form_any_tree(n: int, branching: int, out: int) -> None:
    """The breadth-first hierarchy matches its closed form for any size and branching."""
    shape = Shape(700, 300, out, branching=branching)
    row = next(r for r in simulate(n, shape, input_mtok=RATE_IN, output_mtok=RATE_OUT)
               if r.topology == "hierarchy" and r.agents == n)
    assert (row.calls, row.input_tokens, row.output_tokens) == closed_form("hierarchy", n, shape)


def test_claims_debate_quadratic_only_with_rounds() -> None:
    """Debate is O(N^2) with two or more rounds and not with one; 15x is reached; no cost optimum is claimed."""
    shape = Shape()
    text = claims(simulate(16, shape, input_mtok=RATE_IN, output_mtok=RATE_OUT), shape)
    assert "reproduced" in text[1] and f"{2 * (shape.rounds - 1) * shape.output_tokens:,} tokens" in text[1]
    one_round = Shape(rounds=1)
    assert "not with these assumptions" in claims(simulate(16, one_round, input_mtok=RATE_IN,
                                                           output_mtok=RATE_OUT), one_round)[1]
    assert "not reproducible from cost" in text[2]


def test_cli_runs() -> None:
    """`comptroller simulate topology` prints the table and the three claims."""
    result = CliRunner().invoke(app, ["simulate", "topology", "--n-max", "4"])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n- ") == 3
