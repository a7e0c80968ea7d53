"""The loop detectors tell templated and cheaply repeated work from a loop that costs (issue 13's false alarm)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from loop_rows import old_record, old_rows

from comptroller.domain.defenses.loop_lock import LockStatus
from comptroller.domain.defenses.loops import LoopConfig, LoopHistory, LoopRequest, check_loops
from comptroller.domain.defenses.similarity import mask_volatile, normalise_text, template_key, words_of
from comptroller.domain.scopes import Level

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
CFG = LoopConfig()


def ticket(i: int) -> str:
    """A classifier's template filled with ticket ``i``'s numbers."""
    return f"Classify ticket #{1000 + 7 * i}: price {i % 50 + 0.99} EUR, {1 + i % 9} items, customer {50_000 + i}."


def req(i: int, text: str, ceiling_mc: int | None, fp: str | None = None) -> LoopRequest:
    """Call ``i`` of agent ``bot`` (its own fingerprint unless ``fp`` is given)."""
    return LoopRequest(call_id=f"c{i}", agent="bot", fingerprint=fp or f"F{i}", text=text, ceiling_mc=ceiling_mc)


def feed(requests: list[LoopRequest], config: LoopConfig = CFG) -> tuple[list[str | None], LoopHistory]:
    """Run the requests one second apart; the detector that fired for each (None: admitted), and the history."""
    state, fired = LoopHistory(Level.AGENT, "ns|acme|bot"), []
    for i, request in enumerate(requests):
        step = check_loops(state, config, request, T0 + timedelta(seconds=i))
        state = step.history
        fired.append(None if step.verdict is None else step.verdict.detector)
    return fired, state


@pytest.mark.parametrize(("raw", "masked"), [
    ("Classify ticket #1234: price 19.99", "classify ticket #1234: price 19.99"),
    ("Order 7 of /data/in.csv, id 9f1c2e3d4b5a", "order 7 of /data/in.csv, id 9f1c2e3d4b5a"),
    ("Now 2024-06-01T12:00:07Z, at 12:04:05 ask 3", "now <ts>, at <time> ask 3"),
    ('TimeoutError: File "/srv/a.py", line 42, id 0xbeef', 'timeouterror: file "<path>", line <num>, id <hex>'),
    ("Summarise 3 items\nrequest failed after 30 s (req 12)",
     "summarise 3 items request failed after <num> s (req <num>)"),
    ("upstream answered status 503 at 4 pm", "upstream answered status <num> at <num> pm"),
])
def test_only_error_looking_lines_have_their_numbers_masked(raw: str, masked: str) -> None:
    """Ordinary lines keep numbers, ids and paths and mask only the clock; error lines mask every variable."""
    assert mask_volatile(raw) == masked


def test_a_text_without_error_lines_or_times_is_only_normalised() -> None:
    """With nothing volatile, mask_volatile is normalise_text; two tickets share a template, another text not."""
    assert mask_volatile(ticket(3)) == normalise_text(ticket(3))
    def key(text: str) -> str:
        return template_key(words_of(mask_volatile(text)))
    assert key(ticket(3)) == key(ticket(4))
    assert key(ticket(3)) != key("Classify the ticket #12 now.")


def test_a_cheap_classifier_filling_one_template_is_never_refused() -> None:
    """500 tickets of one template at $0.001 a call: no detector fires."""
    fired, _ = feed([req(i, ticket(i), 100) for i in range(500)])
    assert fired == [None] * 500


def test_an_expensive_template_trips_once_it_reserved_the_template_floor() -> None:
    """At $0.10 a call, the template trips repeated_template when its earlier calls reserved $1 (the 11th)."""
    ceiling = 10_000
    fired, history = feed([req(i, ticket(i), ceiling) for i in range(12)])
    first = CFG.template_spend_mc_min // ceiling
    assert fired[:first] == [None] * first and fired[first] == "repeated_template"
    assert history.lock.template is not None and history.lock.status(T0 + timedelta(seconds=12)) is LockStatus.OPEN


def test_a_template_locks_its_own_probe_and_a_new_template_closes_it() -> None:
    """After the cooldown, the template's next ticket is refused again; a request of another template closes it."""
    ceiling = 50_000
    _, history = feed([req(i, ticket(i), ceiling) for i in range(CFG.near_duplicates_max + 1)])
    assert history.lock.detector == "repeated_template"
    later = T0 + timedelta(seconds=CFG.cooldown_s_start + 60)
    again = check_loops(history, CFG, req(100, ticket(100), ceiling), later)
    assert again.verdict is not None and again.verdict.evidence.get("probe") is True
    other = "Write a haiku about the sea and the wind over the harbour at night, please."
    closed = check_loops(again.history, CFG, req(101, other, ceiling),
                         later + timedelta(seconds=2 * CFG.cooldown_s_start + 60))
    assert closed.verdict is None and closed.history.lock.status(later) is LockStatus.CLOSED


def test_cheap_identical_repeats_pass_until_they_reserved_the_repeat_floor() -> None:
    """Identical $0.001 requests pass beyond identical_max; same_request fires once the family reserved $0.25."""
    ceiling = 100
    calls = CFG.repeat_spend_mc_min // ceiling
    fired, _ = feed([req(i, "Fetch the quarterly numbers and summarise them.", ceiling, fp="SAME")
                     for i in range(calls + 1)])
    assert fired == [None] * calls + ["same_request"]


def test_a_floor_of_zero_counts_repeats_whatever_they_cost() -> None:
    """repeat_spend_mc_min = 0: the 6th identical request is refused even at $0.00001."""
    fired, _ = feed([req(i, "x y z w v", 1, fp="SAME") for i in range(CFG.identical_max + 1)],
                    LoopConfig(repeat_spend_mc_min=0))
    assert fired == [None] * CFG.identical_max + ["same_request"]


def test_an_unknown_ceiling_reaches_the_floors() -> None:
    """A request without a ceiling counts as reaching every floor: identical_max alone decides (fail closed)."""
    fired, _ = feed([req(i, "x y z w v", None, fp="SAME") for i in range(CFG.identical_max + 1)])
    assert fired == [None] * CFG.identical_max + ["same_request"]


def test_a_history_row_written_before_templates_were_kept_still_reads() -> None:
    """A 7-field entry row reads back with no template and nothing reserved; a malformed one is a clear error."""
    _, history = feed([req(0, ticket(0), 100)])
    old = [row[:7] for row in old_rows(history)]
    read = LoopHistory.from_record(old_record(history, rows=old))
    assert read.entries[0].template == "" and read.entries[0].reserved_mc == 0
    with pytest.raises(ValueError, match="entries"):
        LoopHistory.from_record(old_record(history, rows=[[*old[0], "t"]]))


@pytest.mark.parametrize("field", ["repeat_spend_mc_min", "template_spend_mc_min"])
def test_the_spend_floors_are_validated(field: str) -> None:
    """A negative floor (or a zero template floor) is a configuration error, not a silent default."""
    with pytest.raises(ValueError, match=field):
        LoopConfig(**{field: -1})


def test_a_long_template_with_one_varying_number_is_not_a_near_duplicate() -> None:
    """Texts 0.95 alike that differ only in one number are one template: near_duplicate leaves them to the
    template floor, so cheap calls pass however many there are."""
    long = " ".join(f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(60))
    fired, _ = feed([req(i, f"{long} order {1000 + i}", 100) for i in range(300)])
    assert fired == [None] * 300
