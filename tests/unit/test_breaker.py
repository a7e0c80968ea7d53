"""The spend-rate circuit breaker (DESIGN.md rule 5), in virtual time: no test sleeps."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comptroller.domain.breaker import (
    DEFAULT_THRESHOLD_MC,
    BreakerConfig,
    BreakerState,
    BreakerStatus,
    BreakerStep,
    BreakerTransition,
    admit,
    advance,
    record_spend,
    release_probe,
    reset,
)
from comptroller.domain.codes import Code
from comptroller.domain.defenses.breaker_policy import BreakerPolicy
from comptroller.domain.defenses.errors import DefenseConfigError, UnknownScopeError
from comptroller.domain.defenses.verdict import Rule
from comptroller.domain.money import MC_PER_USD, format_usd
from comptroller.domain.scopes import Attribution, Level

T0 = datetime(2024, 6, 1, tzinfo=UTC)  # midnight: a window boundary for every window length dividing a day
CFG = BreakerConfig()
OVER = CFG.threshold_mc + 1
SCOPE = "acme|alice|writer"


def at(seconds: float) -> datetime:
    """The instant ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


def fresh(level: Level = Level.AGENT, scope: str = SCOPE) -> BreakerState:
    """A new closed breaker."""
    return BreakerState(level=level, scope=scope)


def tripped(config: BreakerConfig = CFG) -> tuple[BreakerState, float]:
    """A breaker opened by ``trip_windows`` over windows, and the trip time in seconds after T0."""
    state = fresh()
    for window in range(config.trip_windows):
        when = window * config.window_s + 1
        state = record_spend(state, config, config.threshold_mc + 1, at(when)).state
    assert state.status is BreakerStatus.OPEN
    return state, float(when)


# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "words"), [
    ("window_s", 0, "window_s"),
    ("window_s", -60, "window_s"),
    ("window_s", 1.5, "window_s"),
    ("threshold_mc", 0, "threshold_mc"),
    ("threshold_mc", -100, "threshold_mc"),
    ("threshold_mc", True, "threshold_mc"),
    ("trip_windows", 0, "trip_windows"),
    ("cooldown_s_start", 0, "cooldown_s_start"),
    ("cooldown_s_start", -5, "cooldown_s_start"),
    ("cooldown_s_start", float("nan"), "cooldown_s_start"),
    ("cooldown_s_max", 4.0, "below breaker.cooldown_s_start"),
    ("probe_lease_s", 0, "probe_lease_s"),
])
def test_invalid_config_is_refused_with_the_field_and_value(field: str, value: object, words: str) -> None:
    """An invalid threshold, window, cooldown or lease raises an error naming the field and its value."""
    with pytest.raises(DefenseConfigError) as info:
        BreakerConfig(**{field: value})  # type: ignore[arg-type]
    assert words in str(info.value)
    assert repr(value) in str(info.value) or f"{value:g}" in str(info.value)  # type: ignore[str-format]


def test_defaults_are_kinthai_numbers() -> None:
    """The defaults are a 60 s window, 3 over windows, cooldown 5 s doubling to at most 300 s."""
    assert (CFG.window_s, CFG.trip_windows, CFG.cooldown_s_start, CFG.cooldown_s_max) == (60, 3, 5.0, 300.0)
    assert CFG.threshold_mc == DEFAULT_THRESHOLD_MC


@pytest.mark.parametrize("trip", range(1, 11))
def test_cooldown_doubles_per_trip_up_to_the_cap(trip: int) -> None:
    """Trip n cools down for min(5 * 2^(n-1), 300) seconds: 5, 10, 20, 40, 80, 160, 300, 300..."""
    assert CFG.cooldown_s(trip) == min(CFG.cooldown_s_start * 2 ** (trip - 1), CFG.cooldown_s_max)


@given(start=st.floats(0.001, 1_000), factor=st.floats(1, 100), trip=st.integers(1, 10_000))
def test_cooldown_never_exceeds_the_max(start: float, factor: float, trip: int) -> None:
    """Whatever the configuration and the number of trips, the cooldown stays within [start, max]."""
    config = BreakerConfig(cooldown_s_start=start, cooldown_s_max=min(start * factor, 86_400))
    assert config.cooldown_s_start <= config.cooldown_s(trip) <= config.cooldown_s_max


# --- closed -> open ------------------------------------------------------------------------------

NORMAL = CFG.threshold_mc  # exactly the threshold is not over ("exceeds" means strictly more)
SKIP = None  # a window with no spend at all


@pytest.mark.parametrize(("name", "spends", "expected"), [
    ("three over windows open it", [OVER, OVER, OVER], "CCO"),
    ("two over windows do not", [OVER, OVER], "CC"),
    ("a normal window breaks the streak", [OVER, OVER, NORMAL, OVER, OVER, OVER], "CCCCCO"),
    ("a silent window breaks the streak", [OVER, OVER, SKIP, OVER, OVER, OVER], "CC-CCO"),
    ("spend equal to the threshold is normal", [NORMAL, NORMAL, NORMAL, NORMAL], "CCCC"),
    ("one over window after normal ones does not", [NORMAL, NORMAL, OVER], "CCC"),
])
def test_closed_opens_after_exactly_three_consecutive_over_windows(name: str, spends: list[int | None],
                                                                   expected: str) -> None:
    """The breaker opens on the third consecutive over window and not before."""
    state = fresh()
    seen = ""
    for window, spend in enumerate(spends):
        if spend is None:
            seen += "-"
            continue
        state = record_spend(state, CFG, spend, at(window * CFG.window_s + 10)).state
        seen += "O" if state.status is BreakerStatus.OPEN else "C"
    assert seen == expected, name


def test_a_window_turns_over_the_moment_it_crosses_not_at_its_end() -> None:
    """Small settles add up within a window, and the third window opens the breaker mid-window."""
    state = fresh()
    cost = CFG.threshold_mc // 4
    crossing = CFG.threshold_mc // cost + 1  # the settle that makes the window strictly over
    for window in range(CFG.trip_windows):
        for k in range(crossing):
            state = record_spend(state, CFG, cost, at(window * CFG.window_s + k)).state
    assert state.status is BreakerStatus.OPEN
    assert state.opened_at == at((CFG.trip_windows - 1) * CFG.window_s + crossing - 1)


@pytest.mark.parametrize("trip_windows", [1, 2, 5])
def test_trip_windows_is_configurable(trip_windows: int) -> None:
    """With trip_windows = n, exactly n consecutive over windows open the breaker."""
    config = BreakerConfig(trip_windows=trip_windows)
    state = fresh()
    statuses = []
    for window in range(trip_windows):
        state = record_spend(state, config, OVER, at(window * config.window_s)).state
        statuses.append(state.status)
    assert statuses == [BreakerStatus.CLOSED] * (trip_windows - 1) + [BreakerStatus.OPEN]


def test_opening_emits_an_event_for_the_owner() -> None:
    """The trip emits one ``breaker/opened`` event with the trip number, cooldown and spend seen."""
    state = fresh()
    events = []
    for window in range(CFG.trip_windows):
        step = record_spend(state, CFG, OVER, at(window * CFG.window_s))
        state, events = step.state, events + list(step.events)
    assert [(e.kind, e.code) for e in events] == [("breaker", BreakerTransition.OPENED)]
    detail = events[0].detail
    assert (detail["trips"], detail["cooldown_s"], detail["window_spend_mc"]) == (1, CFG.cooldown_s(1), OVER)
    assert (events[0].level, events[0].scope) == (Level.AGENT, SCOPE)


# --- open ----------------------------------------------------------------------------------------

def test_open_refuses_with_circuit_open_and_retry_after() -> None:
    """While open, a call is refused with circuit_open and the seconds left in the cooldown."""
    state, trip_s = tripped()
    step = admit(state, CFG, "c1", at(trip_s + 2))
    assert step.verdict is not None
    assert (step.verdict.code, step.verdict.rule, step.verdict.detector) == (Code.CIRCUIT_OPEN, Rule.BREAKER, "open")
    assert step.verdict.retry_after_s == pytest.approx(CFG.cooldown_s(1) - 2)
    assert (step.verdict.level, step.verdict.scope) == (Level.AGENT, SCOPE)
    assert step.state == state  # a refusal changes nothing


def test_spend_settled_while_open_changes_nothing() -> None:
    """Calls admitted before the trip that settle while open do not move the breaker."""
    state, trip_s = tripped()
    assert record_spend(state, CFG, OVER, at(trip_s + 1)).state == state


def test_cooldown_grows_5_10_20_to_300_across_reopens() -> None:
    """Each over probe window re-opens with the doubled cooldown, capped at 300 s."""
    state, now = tripped()
    cooldowns = []
    for probe in range(9):
        assert state.open_until is not None and state.opened_at is not None
        cooldowns.append((state.open_until - state.opened_at).total_seconds())
        now = (state.open_until - T0).total_seconds()
        step = admit(state, CFG, f"probe-{probe}", at(now))
        assert step.probe
        state = record_spend(step.state, CFG, OVER, at(now + 1), call_id=f"probe-{probe}").state
        assert state.status is BreakerStatus.OPEN
    assert cooldowns == [min(5.0 * 2 ** n, 300.0) for n in range(9)]


# --- half-open -----------------------------------------------------------------------------------

def test_cooldown_end_goes_half_open_and_admits_one_probe() -> None:
    """After the cooldown the first call is the probe; others are refused while it is out."""
    state, trip_s = tripped()
    end = trip_s + CFG.cooldown_s(1)
    first = admit(state, CFG, "p1", at(end))
    assert first.admitted and first.probe
    assert [e.code for e in first.events] == [BreakerTransition.HALF_OPENED]
    second = admit(first.state, CFG, "c2", at(end + 1))
    assert second.verdict is not None and second.verdict.detector == "probe_in_flight"
    assert second.verdict.retry_after_s == pytest.approx(CFG.probe_lease_s - 1)
    again = admit(first.state, CFG, "p1", at(end + 1))
    assert again.probe and again.state == first.state  # re-admitting the lease holder is idempotent


def test_a_normal_probe_window_closes_and_resets_the_cooldown() -> None:
    """A probe window at or below the threshold closes the breaker; the next trip cools down 5 s again."""
    state, now = tripped()
    for probe in range(3):  # three over probes: the cooldown has grown to 40 s
        assert state.open_until is not None
        now = (state.open_until - T0).total_seconds()
        state = admit(state, CFG, f"p{probe}", at(now)).state
        state = record_spend(state, CFG, OVER, at(now), call_id=f"p{probe}").state
    assert state.trips == 4 and state.open_until is not None
    now = (state.open_until - T0).total_seconds()
    state = admit(state, CFG, "ok", at(now)).state
    state = record_spend(state, CFG, CFG.threshold_mc, at(now + 1), call_id="ok").state
    assert state.status is BreakerStatus.HALF_OPEN  # the probe window is not complete yet
    step = admit(state, CFG, "next", at(now + CFG.window_s))
    assert step.admitted and not step.probe
    assert [e.code for e in step.events] == [BreakerTransition.CLOSED]
    assert (step.state.status, step.state.trips) == (BreakerStatus.CLOSED, 0)
    retrip, _ = tripped()
    assert retrip.open_until is not None and retrip.opened_at is not None
    assert (retrip.open_until - retrip.opened_at).total_seconds() == CFG.cooldown_s_start


def test_a_probe_settling_after_its_window_closes_the_breaker_at_once() -> None:
    """A long probe that settles after a full normal window closes the breaker in that settle."""
    state, trip_s = tripped()
    end = trip_s + CFG.cooldown_s(1)
    state = admit(state, CFG, "slow", at(end)).state
    step = record_spend(state, CFG, 1, at(end + CFG.window_s + 5), call_id="slow")
    assert step.state.status is BreakerStatus.CLOSED
    assert [e.code for e in step.events] == [BreakerTransition.CLOSED]


def test_an_over_window_while_half_open_reopens_even_before_the_probe_settles() -> None:
    """Spend above the threshold in the probe window re-opens the breaker immediately."""
    state, trip_s = tripped()
    end = trip_s + CFG.cooldown_s(1)
    state = admit(state, CFG, "p", at(end)).state
    step = record_spend(state, CFG, OVER, at(end + 1), call_id="straggler")
    assert step.state.status is BreakerStatus.OPEN
    assert [e.code for e in step.events] == [BreakerTransition.REOPENED]
    assert step.state.trips == 2


def test_a_released_probe_returns_the_lease() -> None:
    """A probe that fails (released, no cost) lets the next call take the lease."""
    state, trip_s = tripped()
    end = trip_s + CFG.cooldown_s(1)
    state = admit(state, CFG, "p1", at(end)).state
    state = release_probe(state, CFG, "p1", at(end + 1)).state
    step = admit(state, CFG, "p2", at(end + 2))
    assert step.probe and step.state.probe_id == "p2"
    assert release_probe(step.state, CFG, "someone-else", at(end + 3)).state == step.state


def test_an_expired_probe_lease_is_taken_by_the_next_call() -> None:
    """A crashed probe gives up its lease at probe_expires_at; the next call probes."""
    config = BreakerConfig(probe_lease_s=20)
    state, trip_s = tripped(config)
    end = trip_s + config.cooldown_s(1)
    state = admit(state, config, "crashed", at(end)).state
    assert admit(state, config, "c", at(end + config.probe_lease_s - 1)).verdict is not None
    step = admit(state, config, "c", at(end + config.probe_lease_s))
    assert step.probe and step.state.probe_id == "c"


def test_a_crashed_probe_whose_window_stayed_normal_closes_the_breaker() -> None:
    """When the lease runs out after a full probe window with no spend, the rate is normal: it closes."""
    state, trip_s = tripped()
    end = trip_s + CFG.cooldown_s(1)
    state = admit(state, CFG, "crashed", at(end)).state
    step = admit(state, CFG, "c", at(end + max(CFG.probe_lease_s, CFG.window_s)))
    assert step.admitted and step.state.status is BreakerStatus.CLOSED


def test_straggler_spend_before_the_first_probe_is_not_counted() -> None:
    """Spend settled half-open before any probe comes from calls admitted before the trip: ignored."""
    state, trip_s = tripped()
    state = advance(state, CFG, at(trip_s + CFG.cooldown_s(1))).state
    assert state.status is BreakerStatus.HALF_OPEN
    assert record_spend(state, CFG, OVER, at(trip_s + CFG.cooldown_s(1) + 1)).state == state


# --- admin reset, bad input, persistence ---------------------------------------------------------

def test_admin_reset_closes_and_forgets_the_trips() -> None:
    """A manual reset closes an open breaker, zeroes the trips and records who did it."""
    state, trip_s = tripped()
    step = reset(state, at(trip_s + 1), by="ops@acme")
    assert (step.state.status, step.state.trips, step.state.version) == (BreakerStatus.CLOSED, 0,
                                                                          state.version + 1)
    assert [(e.code, e.detail["by"]) for e in step.events] == [(BreakerTransition.RESET, "ops@acme")]
    assert admit(step.state, CFG, "c", at(trip_s + 2)).admitted


@pytest.mark.parametrize(("call", "error"), [
    (lambda: record_spend(fresh(), CFG, -1, T0), ValueError),
    (lambda: record_spend(fresh(), CFG, 1, datetime(2024, 6, 1)), ValueError),
    (lambda: admit(fresh(), CFG, "", T0), DefenseConfigError),
    (lambda: reset(fresh(), T0, by=""), DefenseConfigError),
    (lambda: BreakerState(level="galaxy", scope="x"), DefenseConfigError),  # type: ignore[arg-type]
    (lambda: BreakerState(level=Level.AGENT, scope=""), DefenseConfigError),
])
def test_bad_input_raises(call: object, error: type[Exception]) -> None:
    """Negative costs, naive times, empty ids and unknown levels are errors, not outcomes."""
    with pytest.raises(error):
        call()  # type: ignore[operator]


def test_unchanged_state_keeps_its_version() -> None:
    """A step that changes nothing returns the same version, so the store can skip the write."""
    state = fresh()
    step = admit(state, CFG, "c", T0)
    assert step.state is state


def test_a_corrupt_record_names_the_field() -> None:
    """Reading a record with a mistyped field raises ValueError naming it."""
    record = fresh().to_record()
    record["trips"] = "three"
    with pytest.raises(ValueError, match="'trips'"):
        BreakerState.from_record(record)


# --- properties of the pure model ----------------------------------------------------------------

OPS = st.lists(st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 90)),
    st.tuples(st.just("admit"), st.integers(0, 5)),
    st.tuples(st.just("settle"), st.integers(0, 5), st.integers(0, 3 * CFG.threshold_mc)),
    st.tuples(st.just("release"), st.integers(0, 5)),
), max_size=120)


@dataclass
class _Model:
    """What the property test tracks beside the breaker: probes out and their lease expiries."""

    now: float = 0.0
    out: dict[str, float] | None = None


@settings(max_examples=400, deadline=None)
@given(ops=OPS, threshold=st.integers(1, 3 * CFG.threshold_mc), trip_windows=st.integers(1, 3),
       start_open=st.booleans())
def test_never_two_probes_out_and_states_stay_valid(ops: list[tuple[object, ...]], threshold: int,
                                                    trip_windows: int, start_open: bool) -> None:
    """In any sequence of admits, settles, releases and ticks, at most one live probe is out per half-open spell."""
    config = BreakerConfig(threshold_mc=threshold, trip_windows=trip_windows)
    state, trip_s = tripped(config) if start_open else (fresh(), 0.0)
    model = _Model(now=trip_s, out={})
    assert model.out is not None
    for op in ops:
        before = state.version
        if op[0] == "tick":
            model.now += float(op[1])  # type: ignore[arg-type]
            continue
        call = f"c{op[1]}"
        if op[0] == "admit":
            step = admit(state, config, call, at(model.now))
            if step.probe:
                live = {c for c, exp in model.out.items() if exp > model.now and c != call}
                assert not live, f"{call} got the probe while {live} hold it"
                if call not in model.out or step.state.version != before:  # a fresh lease, not a re-admit
                    model.out[call] = model.now + config.probe_lease_s
        elif op[0] == "settle":
            step = record_spend(state, config, int(op[2]), at(model.now), call_id=call)  # type: ignore[call-overload]
            model.out.pop(call, None)
        else:
            step = release_probe(state, config, call, at(model.now))
            model.out.pop(call, None)
        state = step.state
        if state.status is BreakerStatus.OPEN:
            model.out.clear()  # re-opening voids any probe lease: its call is no longer a probe
        _check_invariants(state, config, before)
        assert BreakerState.from_record(state.to_record()) == state


def _check_invariants(state: BreakerState, config: BreakerConfig, version_before: int) -> None:
    """The state invariants every step keeps."""
    assert state.version >= version_before
    if state.status is BreakerStatus.OPEN:
        assert state.open_until is not None and state.opened_at is not None
        assert (state.open_until - state.opened_at).total_seconds() <= config.cooldown_s_max
        assert state.trips >= 1
    if state.probe_id is not None:
        assert state.status is BreakerStatus.HALF_OPEN and state.probe_expires_at is not None
    if state.status is BreakerStatus.CLOSED:
        assert state.trips == 0 and state.over_streak < config.trip_windows


def test_threads_racing_for_the_probe_through_compare_and_set_admit_exactly_one() -> None:
    """Fifty threads racing through a compare-and-set cell get exactly one probe lease."""
    state, trip_s = tripped()
    now = at(trip_s + CFG.cooldown_s(1))

    class Cell:
        """A store row with compare-and-set on the version (the contract a real store implements)."""

        def __init__(self, value: BreakerState) -> None:
            self.value, self.lock = value, threading.Lock()

        def swap(self, expected: int, new: BreakerState) -> bool:
            with self.lock:
                if self.value.version != expected:
                    return False
                self.value = new
                return True

    cell, barrier, results = Cell(state), threading.Barrier(50), []

    def worker(i: int) -> None:
        barrier.wait()
        while True:
            seen = cell.value
            step = admit(seen, CFG, f"call-{i}", now)
            if step.state.version == seen.version or cell.swap(seen.version, step.state):
                results.append(step)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(step.probe for step in results) == 1
    assert sum(not step.admitted for step in results) == 49


# --- the seed scenario ---------------------------------------------------------------------------

def test_runaway_agent_is_stopped_within_minutes_long_before_its_monthly_budget() -> None:
    """An agent with a $100/month budget spending $50/hour trips its breaker within 3 minutes (after
    $2.25), and over the 2 hours the budget alone would last it spends under a fifth of it: the
    breaker saves more than $80."""
    budget_mc = 100 * MC_PER_USD
    rate_mc_per_h = 50 * MC_PER_USD
    cost_mc, every = 5_000, timedelta(milliseconds=3_600)  # 1,000 calls an hour x $0.05 = $50/hour
    assert cost_mc * (timedelta(hours=1) // every) == rate_mc_per_h
    horizon = timedelta(hours=budget_mc / rate_mc_per_h)  # when the budget alone would stop it
    calls = [T0 + k * every for k in range(horizon // every)]
    state, spent, first_trip, spent_at_trip, reopens = fresh(), 0, None, 0, 0
    for k, now in enumerate(calls):
        step = admit(state, CFG, f"c{k}", now)
        state = step.state
        if not step.admitted:
            continue
        step = record_spend(state, CFG, cost_mc, now, call_id=f"c{k}")
        state, spent = step.state, spent + cost_mc
        codes = [e.code for e in step.events]
        if BreakerTransition.OPENED in codes and first_trip is None:
            first_trip, spent_at_trip = now, spent
        reopens += codes.count(BreakerTransition.REOPENED)
    # expected trip: the settle that takes the third window strictly over the threshold
    third_window = [t for t in calls if 2 * CFG.window_s <= (t - T0).total_seconds() < 3 * CFG.window_s]
    expected_trip = third_window[CFG.threshold_mc // cost_mc]
    assert first_trip == expected_trip
    assert (first_trip - T0) <= timedelta(seconds=CFG.trip_windows * CFG.window_s)
    assert spent_at_trip == (calls.index(expected_trip) + 1) * cost_mc
    # every re-open stops the probe window at its first settle over the threshold
    assert spent <= spent_at_trip + reopens * (CFG.threshold_mc + cost_mc)
    saved = budget_mc - spent
    assert saved > 80 * MC_PER_USD, f"saved only {format_usd(saved)}"
    assert spent < budget_mc // 5, f"tripped at {first_trip} after {format_usd(spent_at_trip)}; spent {spent}"


# --- which scopes have a breaker -----------------------------------------------------------------

def test_default_policy_guards_every_agent_and_conversation() -> None:
    """By default a call gets its agent's and its conversation's breakers, broadest first."""
    policy = BreakerPolicy()
    with_room = Attribution(namespace="acme", tenant="alice", agent="writer", conversation="room")
    assert [(lvl, scope) for lvl, scope, _ in policy.breakers_for(with_room.scopes())] == [
        (Level.AGENT, "acme|alice|writer"), (Level.CONVERSATION, "acme|alice|room")]
    alone = Attribution(namespace="acme", tenant="alice", agent="writer")
    assert [lvl for lvl, _, _ in policy.breakers_for(alone.scopes())] == [Level.AGENT]


def test_overrides_set_or_switch_off_one_scope() -> None:
    """A scope override replaces its level's config, or None switches that breaker off."""
    strict = BreakerConfig(threshold_mc=10)
    policy = BreakerPolicy(overrides={(Level.AGENT, SCOPE): strict, (Level.CONVERSATION, "acme|alice|room"): None})
    assert policy.config_for(Level.AGENT, SCOPE) == strict
    assert policy.config_for(Level.AGENT, "acme|alice|other") == BreakerConfig()
    assert policy.config_for(Level.CONVERSATION, "acme|alice|room") is None
    call = Attribution(namespace="acme", tenant="alice", agent="writer", conversation="room")
    assert [(lvl, cfg) for lvl, _, cfg in policy.breakers_for(call.scopes())] == [(Level.AGENT, strict)]


@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda: BreakerPolicy().config_for(Level.TENANT, "acme|alice"), UnknownScopeError, "no breaker"),
    (lambda: BreakerPolicy(levels={"galaxy": BreakerConfig()}),  # type: ignore[dict-item]
     DefenseConfigError, "galaxy"),
    (lambda: BreakerPolicy(overrides={(Level.AGENT, "*"): None}), DefenseConfigError, "'*'"),
    (lambda: BreakerPolicy(levels={Level.AGENT: 5}), DefenseConfigError, "BreakerConfig"),  # type: ignore[dict-item]
])
def test_unknown_scopes_and_bad_policies_are_clear_errors(make: object, error: type[Exception],
                                                          words: str) -> None:
    """An unconfigured scope, an unknown level or a bad override raises a message that names it."""
    with pytest.raises(error, match=words.replace("*", r"\*")):
        make()  # type: ignore[operator]


def test_steps_report_admission() -> None:
    """A step without a verdict is admitted."""
    assert BreakerStep(fresh()).admitted
