"""Tokens and cost of multi-agent topologies as the number of agents N grows.

Each topology is simulated call by call: every call's input is its agent's system
prompt, the task, and the messages it reads, serialised in full (no summarising, no
caching); every call writes ``output_tokens``. The figures are therefore what
context serialisation alone costs, before tool loops, retries or caching.

Topologies (``S`` system prompt, ``T`` task, ``O`` output per call, tokens):

* ``single``: one agent, one call (the baseline of every ratio).
* ``star``: an orchestrator plans (reads S+T), N workers each read S+T and the plan,
  and the orchestrator synthesises from S+T, its plan and all N answers.
* ``pipeline``: N agents in a chain, agent k reads S+T and every earlier output
  (the whole transcript is handed on, as ChatDev's phases do).
* ``debate``: N agents, ``rounds`` rounds; in round 1 each reads S+T, in every later
  round each reads S+T and the other N-1 agents' previous answers (Du et al., "Improving
  Factuality and Reasoning in Language Models through Multiagent Debate", 2023).
* ``hierarchy``: a tree filled breadth-first with ``branching`` children per manager;
  a manager plans (reads S+T and its own instruction) and synthesises (adds its plan
  and its children's answers); a leaf answers its instruction; every agent but the
  root receives one instruction of O tokens.

The published claims it checks (:func:`claims`):

* "multi-agent systems use about 15x more tokens than chats" (Anthropic, "How we built
  our multi-agent research system", 13 Jun 2025): the N at which each topology reaches
  15x the single call;
* "debate grows as O(N^2)": the second difference of debate tokens in N is constant
  and positive (quadratic) exactly when ``rounds >= 2``;
* "the optimal decomposition is about N = 9": token cost alone has no interior optimum
  (every topology's tokens rise monotonically with N), so an optimum needs an assumed
  benefit curve; the simulator reports that it cannot be reproduced from cost.

Cost is priced once over the totals at the model's base rates (USD per million tokens),
rounded half up to a millicent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["TOPOLOGIES", "Shape", "TopologyRow", "claims", "simulate", "topology_tokens"]

TOPOLOGIES = ("single", "star", "pipeline", "debate", "hierarchy")
_CLAIM_RATIO = 15
_MTOK = Decimal(1_000_000)
_MC_PER_USD = 100_000


@dataclass(frozen=True, slots=True)
class Shape:
    """The assumptions, tokens (``rounds`` for debate, ``branching`` for the hierarchy)."""

    system_tokens: int = 1000
    task_tokens: int = 500
    output_tokens: int = 400
    rounds: int = 3
    branching: int = 3

    def __post_init__(self) -> None:
        for name in ("system_tokens", "task_tokens", "output_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 tokens, got {getattr(self, name)}")
        if self.rounds < 1 or self.branching < 1:
            raise ValueError(f"rounds and branching must be >= 1, got {self.rounds} and {self.branching}")


@dataclass(frozen=True, slots=True)
class TopologyRow:
    """One topology at one N: calls, tokens, cost (mc) and tokens relative to the single call."""

    topology: str
    agents: int
    calls: int
    input_tokens: int
    output_tokens: int
    cost_mc: int
    ratio_to_single: float


Calls = list[int]
"""The input tokens of each call (each call writes ``output_tokens``)."""


def _single(n: int, s: Shape) -> Calls:
    return [s.system_tokens + s.task_tokens]


def _star(n: int, s: Shape) -> Calls:
    base, out = s.system_tokens + s.task_tokens, s.output_tokens
    plan = [base]
    workers = [base + out for _ in range(n)]
    return plan + workers + [base + out + n * out]


def _pipeline(n: int, s: Shape) -> Calls:
    base, transcript, calls = s.system_tokens + s.task_tokens, 0, []
    for _ in range(n):
        calls.append(base + transcript)
        transcript += s.output_tokens
    return calls


def _debate(n: int, s: Shape) -> Calls:
    base, calls = s.system_tokens + s.task_tokens, []
    for r in range(s.rounds):
        for _ in range(n):
            others = 0 if r == 0 else (n - 1) * s.output_tokens
            calls.append(base + others)
    return calls


def _hierarchy(n: int, s: Shape) -> Calls:
    base, out, calls = s.system_tokens + s.task_tokens, s.output_tokens, []
    for node in range(n):
        children = [c for c in range(s.branching * node + 1, s.branching * node + s.branching + 1) if c < n]
        instruction = 0 if node == 0 else out
        if children:
            calls.append(base + instruction)  # plan
            calls.append(base + instruction + out + len(children) * out)  # synthesis
        else:
            calls.append(base + instruction)
    return calls


_BUILDERS: dict[str, Callable[[int, Shape], Calls]] = {
    "single": _single, "star": _star, "pipeline": _pipeline, "debate": _debate, "hierarchy": _hierarchy}


def topology_tokens(topology: str, n: int, shape: Shape) -> tuple[int, int, int]:
    """``(calls, input tokens, output tokens)`` of one topology with ``n`` agents, simulated call by call.

    Raises:
        ValueError: for an unknown topology or ``n < 1``.
    """
    if topology not in _BUILDERS:
        raise ValueError(f"unknown topology {topology!r}; use one of {', '.join(TOPOLOGIES)}")
    if n < 1:
        raise ValueError(f"the number of agents must be >= 1, got {n}")
    calls = _BUILDERS[topology](n, shape)
    return len(calls), sum(calls), len(calls) * shape.output_tokens


def _cost_mc(input_tokens: int, output_tokens: int, input_mtok: Decimal, output_mtok: Decimal) -> int:
    usd = (input_tokens * input_mtok + output_tokens * output_mtok) / _MTOK
    return int((usd * _MC_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def simulate(n_max: int, shape: Shape, *, input_mtok: Decimal, output_mtok: Decimal) -> list[TopologyRow]:
    """Every topology for N = 1..n_max (``single`` once per N, as the baseline).

    Args:
        n_max: the largest number of agents (>= 1).
        shape: the token assumptions.
        input_mtok, output_mtok: the model's rates, USD per million tokens.
    """
    _, in1, out1 = topology_tokens("single", 1, shape)
    single_tokens = in1 + out1
    rows = []
    for topology in TOPOLOGIES:
        for n in range(1, n_max + 1):
            calls, tokens_in, tokens_out = topology_tokens(topology, n, shape)
            rows.append(TopologyRow(topology, n, calls, tokens_in, tokens_out,
                                    _cost_mc(tokens_in, tokens_out, input_mtok, output_mtok),
                                    round((tokens_in + tokens_out) / single_tokens, 2) if single_tokens else 0.0))
    return rows


def claims(rows: list[TopologyRow], shape: Shape) -> list[str]:
    """One sentence per published claim: reproduced, refuted or not reproducible, with the figures."""
    by = {(r.topology, r.agents): r for r in rows}
    n_max = max(r.agents for r in rows)
    first = {t: next((n for n in range(1, n_max + 1) if by[(t, n)].ratio_to_single >= _CLAIM_RATIO), None)
             for t in TOPOLOGIES if t != "single"}
    reach = ", ".join(f"{t} at N={n}" if n else f"{t} not by N={n_max}" for t, n in first.items())
    out = [f"15x the tokens of a single call (Anthropic, 2025): reached by {reach} "
           f"(S={shape.system_tokens}, T={shape.task_tokens}, O={shape.output_tokens} tokens per call)."]
    totals = [by[("debate", n)].input_tokens + by[("debate", n)].output_tokens for n in range(1, n_max + 1)]
    second = {totals[i + 2] - 2 * totals[i + 1] + totals[i] for i in range(len(totals) - 2)}
    if len(second) == 1 and next(iter(second)) > 0:
        out.append(f"debate grows as O(N^2): reproduced; the second difference in N is a constant "
                   f"{next(iter(second)):,} tokens = 2 x (rounds-1) x O with {shape.rounds} rounds.")
    else:
        out.append(f"debate grows as O(N^2): not with these assumptions (rounds = {shape.rounds}; second "
                   f"differences {sorted(second)}): with one round nobody reads anybody, and tokens grow as O(N).")
    monotone = all(by[(t, n + 1)].input_tokens + by[(t, n + 1)].output_tokens
                   >= by[(t, n)].input_tokens + by[(t, n)].output_tokens
                   for t in TOPOLOGIES for n in range(1, n_max))
    out.append("optimal decomposition at about N=9: not reproducible from cost"
               + (": every topology's tokens rise monotonically with N, so an optimum needs an assumed benefit "
                  "curve, which token economics does not give." if monotone else "."))
    return out
