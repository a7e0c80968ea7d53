"""Every runtime defense through the one admit path (Engine over each ledger backend).

Table test of each layer's refusal (code, level, words of the message), the fixed
order of checks, probe leases under threads, state kept in the ledger, and the
seed's runaway scenario in virtual time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from comptroller.clock import VirtualClock
from comptroller.domain.breaker import BreakerConfig, BreakerStatus
from comptroller.domain.budgets import ANY_SCOPE, Budget, Period
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.defenses.breaker_policy import BreakerPolicy
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.defenses.errors import UnknownScopeError
from comptroller.domain.defenses.killswitch import KillSwitchConfig
from comptroller.domain.defenses.loops import LoopConfig
from comptroller.domain.defenses.pacing import PaceAction, PacingConfig
from comptroller.domain.defenses.pinning import AgentPin, PinningPolicy, RouteReason
from comptroller.domain.defenses.retries import RetryPolicy
from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.money import MC_PER_USD, format_usd
from comptroller.domain.pricing import ModelPrice
from comptroller.domain.scopes import Level
from comptroller.domain.usage import Usage
from comptroller.engine import Admission, CallRequest, Engine
from comptroller.engine.admin import Admin
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from ledger_kit import attribution

START = datetime(2025, 6, 2, 9, tzinfo=UTC)  # a Monday; June has 30 days
# $50 per million output tokens: a 1,000-token answer costs exactly $0.05 (5,000 mc)
FLAT = ModelPrice(model="flat", input_mtok=Decimal(0), output_mtok=Decimal(50), source="test")
CHEAP = ModelPrice(model="cheap", input_mtok=Decimal(0), output_mtok=Decimal(5), source="test")
PRICES = {"flat": FLAT, "cheap": CHEAP}
ANSWER = Usage(input_tokens=0, output_tokens=1_000)
SMALL_BREAKER = BreakerConfig(threshold_mc=10_000, window_s=60)  # more than 2 answers a minute is over


def _engine(store: LedgerStore, clock: VirtualClock, defenses: Defenses) -> Engine:
    return Engine(store=store, prices=PriceBook(overrides=PRICES), clock=clock,
                  caps=OutputCaps(default_tokens=1_000), ttl_s=60.0, defenses=defenses)


def _call(agent: str = "a1", model: str = "flat", **extra: str | None) -> CallRequest:
    who = attribution(agent, conversation="room", task="job")
    return CallRequest(who, model, input_tokens_max=0, **extra)  # type: ignore[arg-type]


def _run(engine: Engine, call: CallRequest) -> Admission:
    """Admit and, if admitted, settle one answer."""
    admission = engine.admit(call)
    if admission.reservation is not None:
        engine.settle(admission.reservation, ANSWER)
    return admission


# --- one refusal per layer -----------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    defenses: Defenses
    provoke: Callable[[Engine, VirtualClock], Admission]
    code: Code
    level: Level
    words: tuple[str, ...]


def _kill(engine: Engine, clock: VirtualClock) -> Admission:
    Admin(engine.store, clock).kill(Level.NAMESPACE, "ns", by="ops", reason="incident 42")
    return engine.admit(_call())


def _pinned(engine: Engine, clock: VirtualClock) -> Admission:
    return engine.admit(_call(model="flat"))


def _deadline(engine: Engine, clock: VirtualClock) -> Admission:
    engine.open_run("cron-1", 60, attribution=attribution("a1"))
    clock.advance(61)
    return engine.admit(_call(run_id="cron-1"))


def _retries(engine: Engine, clock: VirtualClock) -> Admission:
    for k in range(4):  # the first attempt and 3 re-attempts
        assert _run(engine, _call(attempt_id=f"try-{k}")).admitted
    return engine.admit(_call(attempt_id="try-4"))


def _loop(engine: Engine, clock: VirtualClock) -> Admission:
    same = fingerprint("flat", [{"role": "user", "content": "continue"}])
    for _ in range(LoopConfig().identical_max):
        assert _run(engine, _call(fingerprint=same)).admitted
        clock.advance(1)
    return engine.admit(_call(fingerprint=same))


def _breaker(engine: Engine, clock: VirtualClock) -> Admission:
    _open_breaker(engine, clock)
    return engine.admit(_call())


def _pace(engine: Engine, clock: VirtualClock) -> Admission:
    """$0.05 answers on June 2, 09:00: the allowance is 33/720 x 110 % + 5 % of $100 = $10.04."""
    engine.store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 100 * MC_PER_USD, Period.MONTH))
    admitted = 0
    while (admission := _run(engine, _call())).admitted:
        admitted += 1
    assert admitted == 200  # 201 x $0.05 = $10.05 would pass the $10.04 allowance
    return admission


def _budget(engine: Engine, clock: VirtualClock) -> Admission:
    engine.store.put_budget(Budget(Level.CONVERSATION, ANY_SCOPE, 4_000))
    return engine.admit(_call())


def _open_breaker(engine: Engine, clock: VirtualClock) -> None:
    """Three answers in each of three aligned minutes (15,000 mc > 10,000): open at the ninth settle."""
    for k in range(9):
        if k:
            clock.advance(20)
        _run(engine, _call())


OFF = Defenses.budgets_only()
CASES = [
    Case("kill switch", OFF, _kill, Code.KILL_SWITCH, Level.NAMESPACE, ("kill switch", "incident 42", "ops")),
    Case("pinning", replace(OFF, pinning=PinningPolicy(pins={"a1": AgentPin(models=("cheap",))})), _pinned,
         Code.MODEL_NOT_ALLOWED, Level.AGENT, ("'a1'", "'flat'", "cheap")),
    Case("deadline", OFF, _deadline, Code.DEADLINE_EXCEEDED, Level.AGENT, ("cron-1", "60 s", "1.0 s after")),
    Case("retries", replace(OFF, retries=RetryPolicy()), _retries, Code.RETRY_LIMIT, Level.TASK,
         ("4 times", "3 re-attempts")),
    Case("loop", replace(OFF, loops=LoopConfig()), _loop, Code.LOOP_DETECTED, Level.CONVERSATION,
         ("same request", "a1")),
    Case("breaker", replace(OFF, breakers=BreakerPolicy(levels={Level.AGENT: SMALL_BREAKER})), _breaker,
         Code.CIRCUIT_OPEN, Level.AGENT, ("breaker", "open", "$0.10")),
    Case("pacing", replace(OFF, pacing=PacingConfig()), _pace, Code.PACE_EXCEEDED, Level.AGENT, ("pace",)),
    Case("budgets", OFF, _budget, Code.BUDGET_EXCEEDED, Level.CONVERSATION, ("limit $0.04", "$0.05")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_layer_refuses_with_its_code_level_and_message(store: LedgerStore, case: Case) -> None:
    """Each layer's refusal carries its code, the level that refused, and a message naming limit and seen."""
    clock = VirtualClock(START)
    admission = case.provoke(_engine(store, clock, case.defenses), clock)
    verdict = admission.verdict
    assert verdict is not None and not admission.admitted
    assert (verdict.code, verdict.level, admission.code) == (case.code, case.level, case.code)
    for words in case.words:
        assert words in verdict.message, f"{words!r} not in {verdict.message!r}"
    event = store.events("refusal")[-1]
    assert (event.code, event.level, event.detail["rule"]) == (str(case.code), str(case.level), str(verdict.rule))


def test_refused_calls_hold_no_money_and_consume_no_state(store: LedgerStore) -> None:
    """A call refused by a late rule (budgets) leaves no retry attempt or loop entry behind."""
    clock = VirtualClock(START)
    engine = _engine(store, clock, replace(OFF, retries=RetryPolicy(retries_max_per_day=0), loops=LoopConfig()))
    store.put_budget(Budget(Level.CONVERSATION, ANY_SCOPE, 4_000))
    refused = engine.admit(_call(attempt_id="first", fingerprint="f1"))
    assert refused.code is Code.BUDGET_EXCEEDED
    store.put_budget(Budget(Level.CONVERSATION, ANY_SCOPE, 100_000))
    admitted = engine.admit(_call(attempt_id="second", fingerprint="f1", idempotency_key="k2"))
    assert admitted.admitted, admitted.verdict  # "first" was never counted: "second" is the first attempt
    assert all(a.reserved_mc in (0, admitted.ceiling_mc) for a in store.accounts())


# --- the fixed order of checks -------------------------------------------------------------------

def test_kill_switch_beats_pinning_beats_deadline(store: LedgerStore) -> None:
    """With several rules violated at once, the refusal names the first in CHECK_ORDER."""
    clock = VirtualClock(START)
    defenses = replace(OFF, pinning=PinningPolicy(pins={"a1": AgentPin(models=("cheap",))}))
    engine = _engine(store, clock, defenses)
    engine.open_run("cron-1", 1, attribution=attribution("a1"))
    clock.advance(5)
    admin = Admin(store, clock)
    admin.kill(Level.TENANT, "ns|t1", by="ops", reason="drill")
    assert engine.admit(_call(run_id="cron-1")).code is Code.KILL_SWITCH
    admin.unkill(Level.TENANT, "ns|t1", by="ops")
    assert engine.admit(_call(run_id="cron-1")).code is Code.MODEL_NOT_ALLOWED
    assert engine.admit(_call(model="cheap", run_id="cron-1")).code is Code.DEADLINE_EXCEEDED
    assert engine.admit(_call(model="cheap")).code is Code.OK


def test_an_idempotent_retry_is_answered_before_any_defense(store: LedgerStore) -> None:
    """Re-admitting a reserved key answers already_reserved even after a kill switch tripped."""
    clock = VirtualClock(START)
    engine = _engine(store, clock, OFF)
    first = engine.admit(_call(idempotency_key="k1"))
    Admin(store, clock).kill(Level.NAMESPACE, "ns", by="ops", reason="drill")
    again = engine.admit(_call(idempotency_key="k1"))
    assert (again.code, again.reservation) == (Code.ALREADY_RESERVED, first.reservation)


def test_pacing_downgrades_to_the_cheaper_allowed_model(store: LedgerStore) -> None:
    """Over pace with action downgrade, calls move to the agent's cheaper allowed model and say why; when
    that does not fit either, they are refused. By hand: the allowance on June 2, 09:00 of a $100 June
    budget is floor(10,000,000 x 33 h x 110 / (720 h x 100)) + 500,000 = 1,004,166 mc: 200 answers at
    5,000 mc, then 8 at 500 mc (1,004,000), then refused."""
    clock = VirtualClock(START)
    defenses = replace(OFF, pinning=PinningPolicy(pins={"a1": AgentPin(models=("flat", "cheap"))}),
                       pacing=PacingConfig(action=PaceAction.DOWNGRADE))
    engine = _engine(store, clock, defenses)
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 100 * MC_PER_USD, Period.MONTH))
    admitted: list[Admission] = []
    while (admission := _run(engine, _call())).admitted:
        admitted.append(admission)
    assert [a.model for a in admitted] == ["flat"] * 200 + ["cheap"] * 8
    downgraded = admitted[-1]
    assert downgraded.route is not None and downgraded.route.reason is RouteReason.PACING_DOWNGRADE
    assert downgraded.reservation is not None and downgraded.ceiling_mc == 500  # 1,000 tokens at $5/M
    assert admission.verdict is not None
    assert (admission.code, admission.verdict.detector) == (Code.PACE_EXCEEDED, "no_cheaper_model_fits")
    assert sum(r.cost_mc for r in store.usage_records()) == 1_004_000


# --- breakers through the ledger -----------------------------------------------------------------


def test_half_open_admits_exactly_one_probe_among_16_threads(make_store: Callable[[], LedgerStore]) -> None:
    """After the cooldown, 16 threads race: one takes the probe lease, 15 are refused probe_in_flight."""
    store = make_store()
    clock = VirtualClock(START)
    engine = _engine(store, clock, replace(OFF, breakers=BreakerPolicy(levels={Level.AGENT: SMALL_BREAKER})))
    _open_breaker(engine, clock)
    clock.advance(SMALL_BREAKER.cooldown_s_start)
    barrier = threading.Barrier(16)
    results: list[Admission] = []
    lock = threading.Lock()

    def racer(k: int) -> None:
        barrier.wait()
        admission = engine.admit(_call(idempotency_key=f"probe-{k}"))
        with lock:
            results.append(admission)

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 16
    assert sum(a.admitted for a in results) == 1
    refused = [a.verdict for a in results if a.verdict is not None]
    assert {(v.code, v.detector) for v in refused} == {(Code.CIRCUIT_OPEN, "probe_in_flight")}


def test_a_normal_probe_closes_the_breaker_and_a_release_returns_the_lease(store: LedgerStore) -> None:
    """Released probe -> the next call probes; a probe window at or under the threshold closes it."""
    clock = VirtualClock(START)
    engine = _engine(store, clock, replace(OFF, breakers=BreakerPolicy(levels={Level.AGENT: SMALL_BREAKER})))
    _open_breaker(engine, clock)
    clock.advance(5)
    probe = engine.admit(_call(idempotency_key="p1"))
    assert probe.reservation is not None
    assert engine.admit(_call(idempotency_key="p2")).code is Code.CIRCUIT_OPEN
    engine.release(probe.reservation)
    second = engine.admit(_call(idempotency_key="p3"))
    assert second.reservation is not None
    engine.settle(second.reservation, ANSWER)
    clock.advance(SMALL_BREAKER.window_s)
    assert engine.admit(_call(idempotency_key="p4")).admitted
    (state,) = Admin(store, clock).breakers()
    assert (state.status, state.trips) == (BreakerStatus.CLOSED, 0)
    assert [e.code for e in store.events("breaker")] == ["opened", "half_opened", "closed"]


def test_an_admin_reset_closes_an_open_breaker_and_unknown_breakers_are_errors(store: LedgerStore) -> None:
    """reset_breaker closes it at once; resetting a breaker that never saw a call raises and writes nothing."""
    clock = VirtualClock(START)
    engine = _engine(store, clock, replace(OFF, breakers=BreakerPolicy(levels={Level.AGENT: SMALL_BREAKER})))
    _open_breaker(engine, clock)
    assert engine.admit(_call()).code is Code.CIRCUIT_OPEN
    admin = Admin(store, clock)
    with pytest.raises(UnknownScopeError, match="no breaker"):
        admin.reset_breaker(Level.AGENT, "ns|t1|nobody", by="ops")
    assert admin.reset_breaker(Level.AGENT, "ns|t1|a1", by="ops").status is BreakerStatus.CLOSED
    assert engine.admit(_call()).admitted


def test_the_automatic_kill_switch_trips_on_window_spend(store: LedgerStore) -> None:
    """Namespace spend over the window threshold trips the kill switch; the next call is refused."""
    clock = VirtualClock(START)
    kill = KillSwitchConfig(window_s=3_600, window_spend_mc_max=12_000)
    engine = _engine(store, clock, replace(OFF, kill_switches={Level.NAMESPACE: kill}))
    codes = [_run(engine, _call()).code for _ in range(4)]
    assert codes == [Code.OK, Code.OK, Code.OK, Code.KILL_SWITCH]  # 15,000 mc settled > 12,000
    (switch,) = Admin(store, clock).kill_switches()
    assert switch.tripped and switch.by == "automatic" and switch.mode == "window_spend"


def test_the_automatic_kill_switch_trips_on_a_budget_fraction(store: LedgerStore) -> None:
    """A namespace budget spent past budget_pct_max trips the switch at the next admission."""
    clock = VirtualClock(START)
    engine = _engine(store, clock, replace(OFF, kill_switches={Level.NAMESPACE: KillSwitchConfig(budget_pct_max=50)}))
    store.put_budget(Budget(Level.NAMESPACE, ANY_SCOPE, 20_000))
    codes = [_run(engine, _call()).code for _ in range(4)]
    assert codes == [Code.OK, Code.OK, Code.OK, Code.KILL_SWITCH]  # 10,000 of 20,000 is not > 50 %; 15,000 is
    (tripped,) = store.events("kill_switch")
    assert (tripped.code, tripped.detail["mode"]) == ("tripped", "budget_fraction")


def test_seed_runaway_agent_is_stopped_by_its_breaker_long_before_its_budget(store: LedgerStore) -> None:
    """The seed's scenario through the engine: a $100/month agent spending $50/hour (a $0.05 answer every
    3.6 s) trips its default breaker ($0.50 a minute, 3 windows) within 3 minutes. Over the 2 hours the
    budget alone would have lasted it spends under a fifth of it: the breaker saves more than $80."""
    clock = VirtualClock(START)
    engine = _engine(store, clock, replace(OFF, breakers=BreakerPolicy()))
    budget_mc = 100 * MC_PER_USD
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, budget_mc, Period.MONTH))
    every = timedelta(milliseconds=3_600)
    first_refusal: datetime | None = None
    for k in range(2_000):  # 2 hours: the budget alone stops it only at the last call
        clock.set(START + k * every)
        admission = _run(engine, _call(idempotency_key=f"c{k}"))
        if not admission.admitted and first_refusal is None:
            first_refusal = clock.now()
    spent = sum(r.cost_mc for r in store.usage_records())
    saved = budget_mc - spent
    assert first_refusal is not None and first_refusal - START <= timedelta(minutes=3)
    assert saved > 80 * MC_PER_USD, f"spent {format_usd(spent)}, saved {format_usd(saved)}"
    assert [e.code for e in store.events("breaker")][:1] == ["opened"]


# --- loop locks in the ledger ------------------------------------------------------------------------


def test_a_loop_lock_is_kept_in_the_ledger_and_an_admin_reset_lets_the_scope_go_on(store: LedgerStore) -> None:
    """A detected loop locks the conversation in the ledger (a new engine on the same store still refuses the
    loop's retry after the cooldown); an admin reset clears it and the next call passes."""
    clock = VirtualClock(START)
    config = LoopConfig()
    same = fingerprint("flat", [{"role": "user", "content": "again"}])
    engine = _engine(store, clock, replace(OFF, loops=config))
    for _ in range(config.identical_max):
        assert _run(engine, _call(fingerprint=same)).admitted
        clock.advance(1)
    assert engine.admit(_call(fingerprint=same)).code is Code.LOOP_DETECTED
    clock.advance(config.cooldown_s_max)  # half-open: the probe is the loop's own retry
    restarted = _engine(store, clock, replace(OFF, loops=config))
    assert restarted.admit(_call(fingerprint=same)).code is Code.LOOP_DETECTED
    admin = Admin(store, clock)
    (locked,) = [h for h in admin.loops() if h.lock.trips]
    assert locked.lock.trips == 2 and locked.level is Level.CONVERSATION
    admin.reset_loop(locked.level, locked.scope, by="ops")
    assert _run(restarted, _call(fingerprint=same)).admitted
    with pytest.raises(UnknownScopeError, match="loop list"):
        admin.reset_loop(Level.CONVERSATION, "no|such|room", by="ops")
