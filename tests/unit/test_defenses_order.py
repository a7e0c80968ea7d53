"""The fixed order of checks, each layer's refusal (code, level, message), and the Verdict value."""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain import breaker
from comptroller.domain.budgets import Budget, Period
from comptroller.domain.codes import Code
from comptroller.domain.defenses import deadline, fanout, killswitch, loops, pacing, pinning, retries
from comptroller.domain.defenses.order import CHECK_ORDER, first_refusal, rank
from comptroller.domain.defenses.verdict import RULE_CODES, Rule, Verdict
from comptroller.domain.ledger import AccountView
from comptroller.domain.refusals import Refusal
from comptroller.domain.scopes import Level

T0 = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)
AGENT = "acme|alice|writer"
MODULES = [
    "comptroller.domain.breaker", "comptroller.domain.defenses.breaker_policy",
    "comptroller.domain.defenses.deadline", "comptroller.domain.defenses.errors",
    "comptroller.domain.defenses.killswitch", "comptroller.domain.defenses.loops",
    "comptroller.domain.defenses.order", "comptroller.domain.defenses.pacing",
    "comptroller.domain.defenses.pinning", "comptroller.domain.defenses.retries",
    "comptroller.domain.defenses.similarity", "comptroller.domain.defenses.verdict",
    "comptroller.domain.defenses.windows", "comptroller.domain.defenses.fanout",
    "comptroller.domain.defenses.loop_lock", "comptroller.domain.defenses.baseline",
    "comptroller.domain.defenses.dispatch_rule",
]


def test_the_order_is_the_documented_one() -> None:
    """Kill switch, pinning, deadline, dispatch, loop, breaker, fan-out, pacing, rate limit, quota, wallet,
    budgets: ranks 1 to 12."""
    assert [str(r) for r in CHECK_ORDER] == ["kill_switch", "pinning", "deadline", "dispatch", "loop", "breaker",
                                              "fan_out", "pacing", "rate_limit", "quota", "wallet", "budgets"]
    assert [rank(r) for r in CHECK_ORDER] == list(range(1, len(CHECK_ORDER) + 1))
    assert set(CHECK_ORDER) == set(Rule) == set(RULE_CODES)


# --- one refusal per layer, built by the layer itself --------------------------------------------

def _kill() -> Verdict | None:
    state = killswitch.KillSwitchState(level=Level.NAMESPACE, scope="acme")
    return killswitch.check_kill_switch([killswitch.trip(state, T0, by="ops", reason="runaway").state])


def _pin() -> Verdict | None:
    policy = pinning.PinningPolicy(pins={"writer": pinning.AgentPin(models=("cheap",))})
    result = pinning.route_request(policy, agent="writer", scope=AGENT, model="frontier")
    return result if isinstance(result, Verdict) else None


def _deadline() -> Verdict | None:
    run = deadline.ScheduledRun(run_id="cron-7", kind=deadline.RunKind.CRON, level=Level.AGENT, scope=AGENT,
                                opened_at=T0, duration_s_max=60)
    return deadline.check_deadline(run, T0 + timedelta(seconds=61))


def _retry() -> Verdict | None:
    policy, state = retries.RetryPolicy(retries_max_per_day=0), retries.RetryState(scope="acme|task-9")
    state = retries.check_attempt(state, policy, "a1", T0).state
    return retries.check_attempt(state, policy, "a2", T0).verdict


def _loop() -> Verdict | None:
    config, history = loops.LoopConfig(identical_max=1), loops.LoopHistory(Level.CONVERSATION, "acme|room")
    first = loops.LoopRequest(call_id="c1", agent="writer", fingerprint="F", text="draft")
    history = loops.check_loops(history, config, first, T0).history
    again = loops.LoopRequest(call_id="c2", agent="writer", fingerprint="F", text="draft")
    return loops.check_loops(history, config, again, T0).verdict


def _breaker() -> Verdict | None:
    config, state = breaker.BreakerConfig(trip_windows=1), breaker.BreakerState(Level.AGENT, AGENT)
    state = breaker.record_spend(state, config, config.threshold_mc + 1, T0).state
    return breaker.admit(state, config, "c", T0).verdict


def _pace() -> Verdict | None:
    budget = Budget(level=Level.TENANT, scope="acme|alice", limit_mc=1_000_000, period=Period.MONTH)
    acct = AccountView(budget=budget, scope="acme|alice", period_key="2024-06-01", settled_mc=900_000,
                       reserved_mc=0)
    return pacing.check_pace(pacing.PacingConfig(), [acct], 1_000, T0)


def _budget() -> Verdict | None:
    refusal = Refusal(code=Code.BUDGET_EXCEEDED, level=Level.AGENT, scope=AGENT, limit_mc=100, settled_mc=90,
                      reserved_mc=5, requested_mc=10, budget_id="agent:day:*")
    return Verdict.from_refusal(refusal)


def _fan_out() -> Verdict | None:
    state = fanout.admit_in_flight(fanout.InFlight(Level.TASK, "acme|fan"), 1, "c1", 60.0, T0).state
    return fanout.admit_in_flight(state, 1, "c2", 60.0, T0).verdict


@dataclass(frozen=True)
class Layer:
    """One row of the layer table: how to provoke the refusal and what it must say."""

    name: str
    make: Callable[[], Verdict | None]
    code: Code
    level: Level
    scope: str
    words: tuple[str, ...]


LAYERS = [
    Layer("kill switch", _kill, Code.KILL_SWITCH, Level.NAMESPACE, "acme", ("tripped", "runaway", "admin resets")),
    Layer("pinning", _pin, Code.MODEL_NOT_ALLOWED, Level.AGENT, AGENT, ("'frontier'", "['cheap']", "Ask for")),
    Layer("deadline", _deadline, Code.DEADLINE_EXCEEDED, Level.AGENT, AGENT, ("cron-7", "60 s", "1.0 s after")),
    Layer("retry limit", _retry, Code.RETRY_LIMIT, Level.TASK, "acme|task-9", ("attempted 1 times", "00:00 UTC")),
    Layer("loop", _loop, Code.LOOP_DETECTED, Level.CONVERSATION, "acme|room",
          ("same request", "before they are paid")),
    Layer("breaker", _breaker, Code.CIRCUIT_OPEN, Level.AGENT, AGENT, ("is open", "$0.50000", "reset")),
    Layer("fan-out", _fan_out, Code.FAN_OUT_EXCEEDED, Level.TASK, "acme|fan", ("max_in_flight 1", "in flight")),
    Layer("pacing", _pace, Code.PACE_EXCEEDED, Level.TENANT, "acme|alice", ("month budget", "limit $10.00000")),
    Layer("budgets", _budget, Code.BUDGET_EXCEEDED, Level.AGENT, AGENT, ("limit $0.00100", "raise the limit")),
]


@pytest.mark.parametrize("layer", LAYERS, ids=[layer.name for layer in LAYERS])
def test_each_layer_refuses_with_its_code_level_and_a_message_that_helps(layer: Layer) -> None:
    """Every layer's refusal carries its code, the refusing level and scope, and a message naming the limit."""
    verdict = layer.make()
    assert verdict is not None, layer.name
    assert (verdict.code, verdict.level, verdict.scope) == (layer.code, layer.level, layer.scope)
    assert verdict.code in RULE_CODES[verdict.rule]
    assert verdict.message.startswith(f"{layer.code}: ")
    for word in layer.words:
        assert word in verdict.message, (layer.name, word, verdict.message)


@given(picks=st.lists(st.sampled_from(range(len(LAYERS))), min_size=1, max_size=8), nones=st.integers(0, 3))
def test_first_refusal_is_the_earliest_rule_whatever_the_input_order(picks: list[int], nones: int) -> None:
    """Among any set of refusals, first_refusal returns the one whose rule comes first."""
    verdicts = [LAYERS[i].make() for i in picks]
    found = first_refusal([*verdicts, *([None] * nones)])
    assert found is not None
    assert rank(found.rule) == min(rank(v.rule) for v in verdicts if v is not None)


def test_no_refusal_is_none() -> None:
    """All checks passing gives no refusal."""
    assert first_refusal([None, None]) is None


# --- the Verdict value ---------------------------------------------------------------------------

def test_a_verdict_refuses_a_code_its_rule_does_not_answer() -> None:
    """A rule answering another rule's code, or a negative retry-after, is a programming error."""
    with pytest.raises(ValueError, match="rule breaker answers"):
        Verdict(code=Code.KILL_SWITCH, rule=Rule.BREAKER, detector="x", level=None, scope="s", message="m")
    with pytest.raises(ValueError, match="retry_after_s"):
        Verdict(code=Code.CIRCUIT_OPEN, rule=Rule.BREAKER, detector="x", level=None, scope="s", message="m",
                retry_after_s=-1)


def test_a_verdict_becomes_a_refusal_event() -> None:
    """Verdict.event is a ``refusal`` event with the rule, detector, evidence and extra context."""
    verdict = _loop()
    assert verdict is not None
    event = verdict.event(T0, model="gpt-4o")
    assert (event.kind, event.code, event.level, event.scope) == ("refusal", "loop_detected", "conversation",
                                                                  "acme|room")
    assert event.detail["detector"] == "same_request" and event.detail["model"] == "gpt-4o"
    assert event.detail["seen"] == verdict.evidence["seen"]


# --- module hygiene ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    """Each module's __all__ names exist and cover every public class and function defined in it."""
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert all(hasattr(module, n) for n in exported)
    defined = {n for n, obj in vars(module).items()
               if not n.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
               and getattr(obj, "__module__", None) == name}
    assert defined <= exported, defined - exported


_CLOCK_OR_IO_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "sleep", "open"}
_IO_MODULES = {"os", "io", "socket", "time", "subprocess", "pathlib", "threading", "random"}


@pytest.mark.parametrize("name", MODULES)
def test_the_domain_reads_no_clock_and_does_no_io(name: str) -> None:
    """No defense module calls a clock, sleeps, opens files, or imports an I/O or time module."""
    tree = ast.parse(Path(inspect.getfile(importlib.import_module(name))).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert called not in _CLOCK_OR_IO_CALLS, f"{name} calls {called}() on line {node.lineno}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            roots = {(a.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
                     for a in node.names}
            assert not roots & _IO_MODULES, f"{name} imports {roots & _IO_MODULES} on line {node.lineno}"
