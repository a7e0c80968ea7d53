"""The common settle on a record (breaker and kill switch) is exactly what the full state machine writes.

``count_closed_record`` and ``killswitch.count_record`` let a settle skip building a state when it
only adds to window counters. Each must answer either None (the full path decides) or the very
record ``record_spend(...).state.to_record()`` gives, with no event; these tests run random
settle sequences through both and compare at every step.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from comptroller.domain.breaker import BreakerConfig, BreakerState, BreakerStatus, admit, record_spend
from comptroller.domain.breaker_state import count_closed_record
from comptroller.domain.defenses import killswitch
from comptroller.domain.defenses.baseline import SpendBaseline
from comptroller.domain.defenses.breaker_policy import BreakerPolicy
from comptroller.domain.defenses.killswitch import KillSwitchConfig, KillSwitchState
from comptroller.domain.defenses.layers import Defenses
from comptroller.domain.defenses.settle_guard import SettleDefenses
from comptroller.domain.defenses.state_rows import JSON_INT_MAX, JSON_INT_MIN, EncodedRecord, stored_state, text_parts
from comptroller.domain.defenses.windows import EPOCH, US_PER_S, epoch_seconds, epoch_us, window_index
from comptroller.domain.ledger import ReserveRequest
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.state import StateKey, StoredState
from comptroller.storage.rows import new_reservation

T0 = datetime(2024, 6, 1, tzinfo=UTC)

CONFIGS = st.builds(
    BreakerConfig,
    threshold_mc=st.one_of(st.integers(1, 40), st.integers(1, 5_000)),
    window_s=st.sampled_from((1, 10, 60)),
    trip_windows=st.integers(1, 3),
    relative_k=st.one_of(st.none(), st.integers(1, 20)),
    relative_floor_mc=st.one_of(st.integers(0, 80), st.integers(0, 20_000)),
    relative_window_s=st.sampled_from((60, 120, 3_600)),
    baseline_age_s_min=st.sampled_from((1.0, 60.0, 86_400.0)),
)
STEPS = st.lists(st.tuples(st.integers(0, 200_000), st.one_of(st.integers(0, 15), st.integers(0, 6_000))), min_size=1,
                 max_size=60)  # small costs meet the thresholds exactly


@settings(max_examples=300, deadline=None)
@given(config=CONFIGS, steps=STEPS, fallback_mmc=st.one_of(st.none(), st.integers(0, 10_000_000)))
def test_a_closed_breakers_record_counts_as_the_state_machine(config: BreakerConfig, steps: list[tuple[int, int]],
                                                                fallback_mmc: int | None) -> None:
    """Through trips, cooldowns and probes: wherever the record path answers, it equals the full path."""
    state = BreakerState(Level.AGENT, "ns|t|a")
    fallback = None if fallback_mmc is None else SpendBaseline(0, 0, fallback_mmc, T0 - timedelta(days=2))
    now_ms = 0
    for gap_ms, cost in steps:
        now_ms += gap_ms
        now = T0 + timedelta(milliseconds=now_ms)
        state = admit(state, config, "probe", now).state  # half-open: the next settle is the probe's
        record = state.to_record()
        fast = count_closed_record(record, config, cost, now)
        full = record_spend(state, config, cost, now, call_id="probe", fallback=fallback)
        if fast is not None:
            assert state.status is BreakerStatus.CLOSED
            assert full.events == ()
            if fast is record:
                assert full.state.version == state.version
            else:
                assert fast == full.state.to_record()
        state = full.state


def test_the_record_path_takes_the_common_settle() -> None:
    """A small settle in the current windows is answered on the record, one version up."""
    config = BreakerConfig()
    state = record_spend(BreakerState(Level.AGENT, "a"), config, 100, T0).state
    record = state.to_record()
    counted = count_closed_record(record, config, 250, T0 + timedelta(seconds=1))
    assert counted is not None and counted is not record
    assert counted["window_spend_mc"] == 350 and counted["rel_window_spend_mc"] == 350
    assert counted["version"] == state.version + 1


def test_records_of_older_shapes_and_other_statuses_take_the_full_path() -> None:
    """A record without the relative fields (an older ledger), or with another status, is left to record_spend."""
    config = BreakerConfig()
    record = dict(record_spend(BreakerState(Level.AGENT, "a"), config, 100, T0).state.to_record())
    old = {k: v for k, v in record.items() if k not in ("rel_over_streak", "rel_last_over_index", "tripped_by")}
    assert count_closed_record(old, config, 1, T0) is None
    assert BreakerState.from_record(old).rel_over_streak == 0  # the full path still reads it
    assert count_closed_record({**record, "status": "open"}, config, 1, T0) is None
    assert count_closed_record({**record, "window_spend_mc": "many"}, config, 1, T0) is None


@settings(max_examples=300, deadline=None)
@given(limit=st.one_of(st.none(), st.integers(1, 40), st.integers(1, 20_000)), window_s=st.sampled_from((1, 60, 3_600)),
       steps=STEPS)
def test_an_untripped_switchs_record_counts_as_record_spend(limit: int | None, window_s: int,
                                                           steps: list[tuple[int, int]]) -> None:
    """Wherever the switch's record path answers, it equals record_spend's record (and no event)."""
    config = KillSwitchConfig(window_s=window_s, window_spend_mc_max=limit)
    state = KillSwitchState(Level.NAMESPACE, "ns")
    now_ms = 0
    for gap_ms, cost in steps:
        now_ms += gap_ms
        now = T0 + timedelta(milliseconds=now_ms)
        fast = killswitch.count_record(state.to_record(), config, cost, now)
        full = killswitch.record_spend(state, config, cost, now)
        if fast is not None:
            assert not state.tripped and full.events == ()
            assert fast == full.state.to_record()
        state = full.state


@settings(max_examples=300, deadline=None)
@given(us=st.integers(-10**15, 10**17), offset_min=st.integers(-23 * 60, 23 * 60),
       window_s=st.one_of(st.integers(1, 86_400), st.sampled_from((1, 60, 3_600))))
def test_epoch_seconds_give_the_window_index(us: int, offset_min: int, window_s: int) -> None:
    """``epoch_seconds(now) // window_s`` is ``window_index(now, window_s)``, in any time zone; ``epoch_us`` is
    exact."""
    now = (EPOCH + timedelta(microseconds=us)).astimezone(timezone(timedelta(minutes=offset_min)))
    assert epoch_us(now) == us
    assert epoch_seconds(now) == us // US_PER_S
    assert epoch_seconds(now) // window_s == window_index(now, window_s)


def _guard() -> SettleDefenses:
    return SettleDefenses(Defenses(
        breakers=BreakerPolicy(levels={Level.AGENT: BreakerConfig(threshold_mc=3_000, window_s=10),
                                       Level.CONVERSATION: BreakerConfig(threshold_mc=50_000, relative_k=None)}),
        kill_switches={Level.NAMESPACE: KillSwitchConfig(window_s=60, window_spend_mc_max=40_000)},
        retries=None, loops=None))


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 30_000), st.one_of(st.integers(0, 15), st.integers(0, 2_500)),
                                st.booleans()), min_size=1, max_size=50))
def test_a_settle_on_its_own_records_writes_what_a_settle_on_read_records_writes(
        steps: list[tuple[int, int, bool]]) -> None:
    """The settle guard skips checking a record it wrote itself (handed back as the same object); its writes and
    events equal those of a guard that reads every row afresh (a copy: each record checked), through trips."""
    own, fresh = _guard(), _guard()
    who = Attribution(namespace="ns", tenant="t", agent="a", conversation="c")
    rows: dict[StateKey, StoredState] = {}
    now = T0
    for i, (gap_ms, cost, release) in enumerate(steps):
        now += timedelta(milliseconds=gap_ms)
        request = ReserveRequest(idempotency_key=f"k{i}", attribution=who, model="m", ceiling_mc=cost,
                                 input_tokens_max=1, output_tokens_max=1)
        reservation = new_reservation(f"r{i}", request, now)
        keys = own.state_keys(reservation)
        mine = {k: rows[k] for k in keys if k in rows}
        copies = {k: StoredState(s.key, s.version, dict(s.record)) for k, s in mine.items()}
        counted = None if release else cost
        a, b = own.apply(reservation, counted, mine, now), fresh.apply(reservation, counted, copies, now)
        assert [(w.key, w.version, dict(w.record)) for w in a.writes] == [
            (w.key, w.version, dict(w.record)) for w in b.writes]
        assert a.events == b.events
        for w in a.writes:  # a record carrying its text carries the encoder's
            if isinstance(w.record, EncodedRecord):
                assert w.record.json_text == orjson.dumps(dict(w.record), option=orjson.OPT_SORT_KEYS).decode()
        rows.update((w.key, w) for w in a.writes)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(JSON_INT_MIN, JSON_INT_MAX), st.text(max_size=12),
                    st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=300, deadline=None)
@given(record=st.dictionaries(st.text(max_size=8), SCALARS, min_size=1, max_size=12), data=st.data())
@example(record={"a": "\x000\x00", "b": 1}, data=None)  # a field holding a sentinel: not cut
def test_text_cut_around_integer_fields_fills_to_the_encoders_text(record: dict[str, object],
                                                                   data: st.DataObject | None) -> None:
    """Parts of a record's text filled with any integers are the encoder's text of the record with those values."""
    names = ("b",) if data is None else tuple(sorted(data.draw(
        st.sets(st.sampled_from(sorted(record)), min_size=1))))
    parts = text_parts(record, names)  # type: ignore[arg-type]
    if parts is None:  # only when another field holds a sentinel
        assert any(isinstance(v, str) and "\x00" in v for k, v in record.items() if k not in names)
        return
    values = [0] * len(names) if data is None else data.draw(
        st.lists(st.integers(JSON_INT_MIN, JSON_INT_MAX), min_size=len(names), max_size=len(names)))
    filled = parts[0] + "".join(str(v) + p for v, p in zip(values, parts[1:], strict=True))
    assert filled == orjson.dumps({**record, **dict(zip(names, values, strict=True))},
                                  option=orjson.OPT_SORT_KEYS).decode()


def test_a_counted_breaker_record_carries_its_text_from_the_second_settle_in_a_row() -> None:
    """The guard cuts a breaker row's text at its second settle in a row, and writes the text at the third."""
    guard = _guard()
    who = Attribution(namespace="ns", tenant="t", agent="a", conversation="c")
    rows: dict[StateKey, StoredState] = {}
    kinds = []
    for i in range(4):
        request = ReserveRequest(idempotency_key=f"k{i}", attribution=who, model="m", ceiling_mc=10,
                                 input_tokens_max=1, output_tokens_max=1)
        reservation = new_reservation(f"r{i}", request, T0)
        outcome = guard.apply(reservation, 10, {k: rows[k] for k in guard.state_keys(reservation) if k in rows}, T0)
        kinds.append([type(w.record) is EncodedRecord for w in outcome.writes if w.key.kind == "breaker"])
        rows.update((w.key, w) for w in outcome.writes)
    assert kinds == [[False, False], [False, False], [True, True], [True, True]]


@given(kind=st.text(max_size=8), key=st.text(max_size=8), version=st.integers(), record=st.dictionaries(
    st.text(max_size=4), SCALARS, max_size=4))
def test_a_stored_state_built_on_its_slots_is_the_dataclasss(kind: str, key: str, version: int,
                                                              record: dict[str, object]) -> None:
    """stored_state builds what StoredState's constructor builds (equal, same type, every field)."""
    built = stored_state(StateKey(kind, key), version, record)  # type: ignore[arg-type]
    expected = StoredState(StateKey(kind, key), version, record)  # type: ignore[arg-type]
    assert type(built) is StoredState and built == expected and hash(built.key) == hash(expected.key)
    assert (built.key, built.version, built.record) == (expected.key, expected.version, expected.record)
