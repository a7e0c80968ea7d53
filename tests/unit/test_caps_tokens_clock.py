"""Output caps, the input-token upper bound, the clocks and the store URL."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from comptroller.clock import SystemClock, VirtualClock
from comptroller.domain.caps import NoOutputCapError, OutputCaps
from comptroller.domain.pricing import ModelPrice
from comptroller.domain.tokens import PER_MESSAGE_TOKENS, PER_REQUEST_TOKENS, input_tokens_upper_bound
from comptroller.storage import StoreURLError, ledger_target, store_from_url
from comptroller.storage.key_stores import keys_from_url
from comptroller.storage.memory import MemoryStore
from comptroller.storage.sqlite import SQLiteStore


def _price(*, max_output: int | None = None, window: int | None = None) -> ModelPrice:
    return ModelPrice("m", input_mtok=Decimal(1), output_mtok=Decimal(2), max_output_tokens=max_output,
                      context_window=window)


# --- output caps ----------------------------------------------------------------------------------


def test_request_above_the_cap_is_lowered_to_it() -> None:
    """A max_tokens above the agent's cap (or the default cap) is lowered to the cap; one below is kept."""
    caps = OutputCaps(default_tokens=1_000, by_agent={"writer": 4_000})
    price = _price(max_output=100_000)
    assert caps.output_tokens_max(agent="writer", requested=9_000, price=price, input_tokens_max=10) == 4_000
    assert caps.output_tokens_max(agent="other", requested=9_000, price=price, input_tokens_max=10) == 1_000
    assert caps.output_tokens_max(agent="other", requested=300, price=price, input_tokens_max=10) == 300
    assert caps.output_tokens_max(agent="x", requested=0, price=price, input_tokens_max=10) == 0


def test_without_a_request_the_cap_applies() -> None:
    """With no max_tokens, the agent's cap is used, else the default cap."""
    caps = OutputCaps(default_tokens=1_000, by_agent={"writer": 4_000})
    price = _price(max_output=100_000)
    assert caps.output_tokens_max(agent="writer", requested=None, price=price, input_tokens_max=10) == 4_000
    assert caps.output_tokens_max(agent="other", requested=None, price=price, input_tokens_max=10) == 1_000


def test_without_request_or_cap_the_model_maximum_applies() -> None:
    """With neither, the model's max output is used, else the context window minus the input bound."""
    caps = OutputCaps()
    assert caps.output_tokens_max(agent="a", requested=None, price=_price(max_output=8_192, window=128_000),
                                  input_tokens_max=1_000) == 8_192
    assert caps.output_tokens_max(agent="a", requested=None, price=_price(window=16_385),
                                  input_tokens_max=1_000) == 16_385 - 1_000
    assert caps.output_tokens_max(agent="a", requested=700, price=_price(), input_tokens_max=1) == 700


@pytest.mark.parametrize("window", [None, 1_000, 999])
def test_no_bound_at_all_is_an_error_that_says_what_to_configure(window: int | None) -> None:
    """With no request, cap, max output, or room left in the window, NoOutputCapError names agent, model and fix."""
    with pytest.raises(NoOutputCapError, match="output_cap_tokens") as info:
        OutputCaps().output_tokens_max(agent="poet", requested=None, price=_price(window=window),
                                       input_tokens_max=1_000)
    assert "'poet'" in str(info.value) and "'m'" in str(info.value)


def test_a_negative_request_is_rejected() -> None:
    """A negative max_tokens is a ValueError, not a negative ceiling."""
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        OutputCaps(default_tokens=5).output_tokens_max(agent="a", requested=-1, price=_price(), input_tokens_max=1)


@pytest.mark.parametrize("caps", [{"default_tokens": 0}, {"default_tokens": 1.5}, {"by_agent": {"a": 0}},
                                  {"by_agent": {"a": True}}, {"by_agent": {"a": "10"}}])
def test_caps_must_be_positive_integers(caps: dict[str, object]) -> None:
    """Every configured cap is an integer >= 1."""
    with pytest.raises(ValueError, match="output cap"):
        OutputCaps(**caps)  # type: ignore[arg-type]


# --- input token bound ----------------------------------------------------------------------------


def test_bound_counts_utf8_bytes_and_framing() -> None:
    """The bound is the UTF-8 bytes of content, role and name, plus 8 per message and 8 per request."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "name": "Zoë", "content": "日本語 ok"}]
    expected = PER_REQUEST_TOKENS + sum(
        PER_MESSAGE_TOKENS + len(m["content"].encode()) + len(m["role"].encode()) + len(m.get("name", "").encode())
        for m in messages)
    assert input_tokens_upper_bound(messages) == expected


def test_bound_counts_text_parts_tool_calls_and_tools() -> None:
    """Text parts, tool_calls and tool definitions count as their bytes (tools as JSON)."""
    tool_calls = [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "héllo"}, {"type": "text", "text": "!"}]},
                {"role": "assistant", "content": None, "tool_calls": tool_calls}]
    expected = (PER_REQUEST_TOKENS + 2 * PER_MESSAGE_TOKENS + len("héllo!".encode()) + len("user")
                + len("assistant") + len(json.dumps(tool_calls).encode()) + len(json.dumps(tools).encode()))
    assert input_tokens_upper_bound(messages, tools=tools) == expected


def test_bound_of_no_messages_is_the_request_framing() -> None:
    """An empty request is bounded by its framing alone."""
    assert input_tokens_upper_bound([]) == PER_REQUEST_TOKENS


@pytest.mark.parametrize("content", [[{"type": "image_url", "image_url": {"url": "x"}}], ["plain string part"], 42])
def test_bound_refuses_content_it_cannot_bound(content: object) -> None:
    """Images, audio or malformed content are a ValueError rather than a silent underestimate."""
    with pytest.raises(ValueError, match="content"):
        input_tokens_upper_bound([{"role": "user", "content": content}])


# --- clocks ---------------------------------------------------------------------------------------


def test_virtual_clock_moves_only_when_told() -> None:
    """A virtual clock starts where it is told and moves by advance and set only."""
    start = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    clock = VirtualClock(start)
    assert clock.now() == clock.now() == start
    clock.advance(1.5)
    assert clock.now() == start + timedelta(seconds=1.5)
    clock.set(start + timedelta(days=1))
    assert clock.now() == start + timedelta(days=1)
    clock.advance(0)
    assert clock.now() == start + timedelta(days=1)


def test_virtual_clock_defaults_to_2024_utc() -> None:
    """Without a start, the virtual clock reads 2024-01-01T00:00Z."""
    assert VirtualClock().now() == datetime(2024, 1, 1, tzinfo=UTC)


def test_virtual_clock_never_runs_back() -> None:
    """Setting an earlier instant or advancing by a negative amount is a ValueError, and time is unchanged."""
    clock = VirtualClock(datetime(2025, 1, 1, tzinfo=UTC))
    before = clock.now()
    with pytest.raises(ValueError, match="cannot move back"):
        clock.set(before - timedelta(microseconds=1))
    with pytest.raises(ValueError, match="negative"):
        clock.advance(-1)
    assert clock.now() == before


def test_virtual_clock_refuses_naive_datetimes() -> None:
    """Naive datetimes are refused at construction and in set."""
    with pytest.raises(ValueError, match="aware"):
        VirtualClock(datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        VirtualClock().set(datetime(2025, 1, 1))


def test_virtual_clock_accepts_other_offsets() -> None:
    """An aware instant in another offset is the same instant."""
    plus_two = datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert VirtualClock(plus_two).now() == datetime(2025, 1, 1, tzinfo=UTC)


def test_virtual_clock_advances_are_not_lost_across_threads() -> None:
    """Concurrent advances from many threads add up exactly."""
    clock = VirtualClock(datetime(2025, 1, 1, tzinfo=UTC))
    start = clock.now()
    threads = [threading.Thread(target=lambda: [clock.advance(1) for _ in range(200)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert clock.now() == start + timedelta(seconds=8 * 200)


def test_system_clock_is_aware_utc() -> None:
    """The system clock answers aware UTC instants."""
    now = SystemClock().now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)


# --- store URLs -----------------------------------------------------------------------------------


def test_store_from_url_picks_the_backend(tmp_path: Path) -> None:
    """memory:// opens the in-memory store; sqlite:/// URLs and plain paths open SQLite at that path."""
    assert isinstance(store_from_url("memory://"), MemoryStore)
    absolute = tmp_path / "a.db"
    for url, path in ((f"sqlite:///{absolute}", absolute), (str(tmp_path / "b.db"), tmp_path / "b.db")):
        store = store_from_url(url)
        assert isinstance(store, SQLiteStore)
        store.close()
        assert path.exists()


def test_store_from_url_rejects_unknown_schemes() -> None:
    """An unknown scheme is a StoreURLError naming it and the supported ones, for the ledger and its keys."""
    with pytest.raises(StoreURLError, match=r"'redis'.*memory://.*sqlite:///"):
        store_from_url("redis://localhost")
    with pytest.raises(StoreURLError, match=r"'redis'"):
        keys_from_url("redis://localhost")


@pytest.mark.parametrize(("url", "target"), [
    ("memory://", ("memory", "")),
    ("sqlite:///ledger.db", ("sqlite", "ledger.db")),
    ("sqlite:////var/lib/ledger.db", ("sqlite", "/var/lib/ledger.db")),
    ("sqlite://", ("sqlite", ":memory:")),
    ("plain/path.db", ("sqlite", "plain/path.db")),
    ("postgresql://u@h:5432/db?pool_max_size=8", ("postgresql", "postgresql://u@h:5432/db?pool_max_size=8")),
    ("postgres://u@h/db", ("postgresql", "postgres://u@h/db")),
])
def test_ledger_urls_name_one_backend(url: str, target: tuple[str, str]) -> None:
    """Every accepted URL form maps to its backend and what to open (ledger and key store alike)."""
    assert ledger_target(url) == target
