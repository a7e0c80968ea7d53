"""The runaway stories of issue 13, each run through the engine in virtual time with the DEFAULT policy.

One call a minute, 20,000 input and 800 output tokens on gpt-4o (about $0.058 a call, $918.72 in
11 days unchecked), no budget, no policy file: only the defaults stand between the loop and the bill.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from comptroller.bootstrap import build_engine
from comptroller.cli.main import app
from comptroller.clock import VirtualClock
from comptroller.config import Policy
from comptroller.domain.breaker import BreakerConfig
from comptroller.domain.defenses.loops import LoopConfig
from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.ledger import Reservation
from comptroller.domain.money import MC_PER_USD
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine

START = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)
DAYS = 11
MODEL = "gpt-4o"
USAGE = Usage(input_tokens=20_000, output_tokens=800)


@dataclass
class Outcome:
    """What a simulated workload paid and when its calls were admitted."""

    spent_mc: int = 0
    admitted_at: list[datetime] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    detectors: dict[str, int] = field(default_factory=dict)  # refusals by detector (rule) that refused
    first_refused_at: datetime | None = None

    @property
    def spent_usd(self) -> float:
        """Spend in dollars, for messages."""
        return self.spent_mc / MC_PER_USD


def _engine(clock: VirtualClock) -> Engine:
    return build_engine(db_url="memory://", policy=Policy(), clock=clock)


def simulate(calls: Callable[[int], CallRequest | None], *, minutes: int = DAYS * 1440, step_s: float = 60.0,
             usage: Usage = USAGE) -> Outcome:
    """Call ``calls(i)`` every ``step_s`` seconds, ``minutes`` times; admit each request and settle it at ``usage``."""
    clock = VirtualClock(START)
    engine, outcome = _engine(clock), Outcome()
    for minute in range(minutes):
        clock.set(START + timedelta(seconds=minute * step_s))
        call = calls(minute)
        if call is None:
            continue
        admission = engine.admit(call)
        if admission.reservation is None:
            assert admission.verdict is not None
            verdict = admission.verdict
            outcome.refused[verdict.code] = outcome.refused.get(verdict.code, 0) + 1
            detector = verdict.detector or str(verdict.rule)
            outcome.detectors[detector] = outcome.detectors.get(detector, 0) + 1
            outcome.first_refused_at = outcome.first_refused_at or clock.now()
            continue
        outcome.admitted_at.append(clock.now())
        outcome.spent_mc += _settled_mc(engine, admission.reservation, usage)
    return outcome


def unchecked_cost_mc() -> int:
    """What one call costs, priced by the engine itself (so the stories' bounds follow the price list)."""
    clock = VirtualClock(START)
    engine = _engine(clock)
    admission = engine.admit(story_request(Attribution(agent="probe"), [{"role": "user", "content": "hi"}]))
    assert admission.reservation is not None
    return _settled_mc(engine, admission.reservation)


def _settled_mc(engine: Engine, reservation: Reservation, usage: Usage = USAGE) -> int:
    record = engine.settle(reservation, usage).record
    assert record is not None
    return record.cost_mc


def story_request(who: Attribution, messages: list[dict[str, str]]) -> CallRequest:
    """A story's call: 20,000 input tokens and 800 output tokens on gpt-4o, with its fingerprint and last text."""
    return CallRequest(attribution=who, model=MODEL, input_tokens_max=USAGE.input_tokens, max_tokens=800,
                       fingerprint=fingerprint(MODEL, messages), text=messages[-1]["content"])


def error_line(minute: int) -> str:
    """The retry loop's message: the same error, with a new path, line, timestamp and request id each minute."""
    at = START + timedelta(minutes=minute, seconds=minute % 60)
    return (f"Traceback: File \"/srv/agents/worker/jobs/sync_{minute % 7}.py\", line {120 + minute % 13}, in run: "
            f"TimeoutError at {at.isoformat()} for request {minute:08x}-7f3c-4d1e-9a2b-{minute * 7919:012x}. "
            "Please retry the whole task and return the corrected result.")


def test_the_cost_of_one_call_makes_an_unchecked_loop_cost_hundreds() -> None:
    """Sanity of the setting: 11 days of one call a minute would cost more than $900 unchecked."""
    assert unchecked_cost_mc() * DAYS * 1440 > 900 * MC_PER_USD


def test_a_retry_loop_with_a_varying_error_line_is_stopped_in_the_first_hour() -> None:
    """The error line differs each time (timestamp, uuid, path, line): stopped within the first virtual
    hour, and 11 days cost under $5."""
    who = Attribution(tenant="acme", agent="worker", task="sync-42")
    system = {"role": "system", "content": "You are a data sync agent."}
    outcome = simulate(lambda m: story_request(who, [system, {"role": "user", "content": error_line(m)}]))
    assert outcome.admitted_at and outcome.admitted_at[-1] < START + timedelta(hours=1)
    assert outcome.spent_mc < 5 * MC_PER_USD, outcome


def test_an_identical_retry_for_eleven_days_costs_under_one_dollar() -> None:
    """The same request once a minute for 11 days pays less than $1: the lock does not forget."""
    who = Attribution(tenant="acme", agent="retrier")
    messages = [{"role": "user", "content": "Fetch the quarterly numbers and summarise them."}]
    outcome = simulate(lambda m: story_request(who, messages))
    assert outcome.spent_mc < 1 * MC_PER_USD, outcome


def ping_pong(conversation: str | None) -> Callable[[int], CallRequest]:
    """Two agents answering each other in turn, each quoting the other's last point (causal ping-pong)."""
    agents = ("planner", "critic")

    def call(minute: int) -> CallRequest:
        me, other = agents[minute % 2], agents[(minute + 1) % 2]
        who = Attribution(tenant="acme", agent=me, conversation=conversation)
        text = (f"{other} said in reply {minute - 1}: the plan still misses step {minute % 9} of section "
                f"{minute % 5}. I disagree with that point; revise your last answer and send it back to me.")
        return story_request(who, [{"role": "system", "content": f"You are the {me}."},
                              {"role": "user", "content": text}])
    return call


def test_a_ping_pong_in_a_conversation_costs_under_five_dollars() -> None:
    """Two agents alternating in one conversation for 11 days pay less than $5."""
    outcome = simulate(ping_pong("room-7"))
    assert outcome.spent_mc < 5 * MC_PER_USD, outcome


def test_a_ping_pong_without_a_conversation_costs_under_five_dollars() -> None:
    """Without a conversation id each agent's templated turns lock it once they reserved $1: 11 days cost less
    than $5."""
    outcome = simulate(ping_pong(None))
    assert outcome.spent_mc < 5 * MC_PER_USD, outcome



def test_the_cli_lists_and_resets_a_loop_lock(tmp_path: Path) -> None:
    """`comptroller loop list` shows the locked agent and `comptroller loop reset` reopens it for a new call."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    clock = VirtualClock(START)
    who = Attribution(namespace="ns", tenant="acme", agent="retrier")
    messages = [{"role": "user", "content": "Fetch the quarterly numbers and summarise them."}]
    engine = build_engine(db_url=url, policy=Policy(), clock=clock)
    results = [engine.admit(story_request(who, messages)) for _ in range(LoopConfig().identical_max + 1)]
    assert [r.admitted for r in results].count(False) == 1
    engine.store.close()
    runner = CliRunner(env={"COLUMNS": "250"})
    listed = runner.invoke(app, ["loop", "list", "--db", url])
    assert listed.exit_code == 0 and "same_request" in listed.output and "retrier" in listed.output
    reset = runner.invoke(app, ["loop", "reset", "--level", "agent", "--namespace", "ns", "--tenant", "acme",
                                "--agent", "retrier", "--db", url])
    assert reset.exit_code == 0, reset.output
    assert "closed" in reset.output
    again = build_engine(db_url=url, policy=Policy(), clock=clock)
    assert again.admit(story_request(who, messages)).admitted
    again.store.close()


def _paced_agent(spend_before: list[tuple[int, int]], spend_after: list[tuple[int, int]], *,
                 days_before: int = 7, hours_after: int = 24) -> tuple[list[tuple[datetime, str]], datetime]:
    """An agent calling on a schedule for ``days_before`` days, then on another for ``hours_after`` hours.

    Each schedule is ``(every_minutes, input_tokens)`` pairs: a call of that many input tokens every that many
    minutes. Returns the refused calls (time, detector) and when the second schedule started (an hour boundary).
    """
    clock = VirtualClock(START)
    engine = _engine(clock)
    who = Attribution(tenant="acme", agent="steady")
    change = START + timedelta(days=days_before)
    refused: list[tuple[datetime, str]] = []
    for minute in range((days_before * 24 + hours_after) * 60):
        now = START + timedelta(minutes=minute)
        clock.set(now)
        for n, (every, tokens) in enumerate(spend_before if now < change else spend_after):
            if minute % every:
                continue
            call = CallRequest(attribution=who, model=MODEL, input_tokens_max=tokens, max_tokens=1,
                               text=f"step {minute} part {n}")
            admission = engine.admit(call)
            if admission.reservation is None:
                assert admission.verdict is not None
                refused.append((now, admission.verdict.detector))
                continue
            engine.settle(admission.reservation, Usage(input_tokens=tokens, output_tokens=0))
    return refused, change


def test_an_agent_at_100x_its_own_baseline_trips_within_three_windows() -> None:
    """$0.001 a minute for 7 days, then 100x that: the relative breaker refuses within 3 one-hour windows
    (the fixed $0.50-a-minute threshold never would)."""
    refused, change = _paced_agent([(10, 4_000)], [(1, 40_000)])  # $0.01 / 10 min, then $0.10 / min
    config = BreakerConfig()
    assert refused, "never tripped"
    first, detector = refused[0]
    assert detector == "relative_rate"
    assert change <= first < change + timedelta(seconds=config.trip_windows * config.relative_window_s)


def test_an_agent_at_twice_its_own_baseline_does_not_trip() -> None:
    """$1.20 an hour for 7 days, then twice that for a day (above the $1 floor, below 10x): no refusal."""
    refused, _ = _paced_agent([(10, 80_000)], [(10, 80_000), (10, 80_000)])  # $0.20 / 10 min, then 2x
    assert refused == []


def test_replaying_the_chatdev_traces_with_the_default_defenses_and_no_budget_refuses_no_call(tmp_path: Path) -> None:
    """The shipped ChatDev traffic (1,909 calls) through every default defense, no budget: no false alarm."""
    root = Path(__file__).resolve().parents[2]
    shipped = (root / "policies" / "chatdev.toml").read_text(encoding="utf-8")
    policy = tmp_path / "no-budgets.toml"  # its aliases and prices, no budgets, no defense section
    policy.write_text(shipped[:shipped.index("[[budgets]]")], encoding="utf-8")
    out = tmp_path / "report.json"
    done = CliRunner().invoke(app, ["replay", str(root / "data" / "traces" / "chatdev_warehouse.jsonl"),
                                    "--policy", str(policy), "--db", "memory://", "--json", str(out)])
    assert done.exit_code == 0, done.output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["calls"] > 1_000 and report["refused_calls"] == 0 and report["refusals"] == []
