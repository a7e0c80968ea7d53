"""WAL checkpoints off the request path: the upkeep copies the WAL into the ledger file; the WAL stays bounded.

Real SQLite files, real writes through the engine (admit and settle pairs), the WAL's size read
from the file system. Bounds are in WAL frames (a page plus its 24-byte header).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_kit import MODEL, GatewayFactory, stub_policy, wait_for

from comptroller.bootstrap import build_engine
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.gateway.upkeep import WAL_BACKSTOP_PAGES, Checkpointed, WalCheckpoints
from comptroller.storage.sqlite import SQLiteStore

PAGE_BYTES = 4096  # SQLite's default page size, what these files use
FRAME_BYTES = PAGE_BYTES + 24
WAL_HEADER_BYTES = 32


def _engine(path: Path) -> tuple[Engine, SQLiteStore]:
    store = SQLiteStore(path)
    return build_engine(db_url="", policy=stub_policy(), store=store), store


def _pairs(engine: Engine, n: int, tag: str) -> None:
    """``n`` admit + settle pairs, each a distinct call."""
    for i in range(n):
        call = CallRequest(attribution=Attribution(namespace="test", tenant="acme", agent=f"a{i % 7}"),
                           model=MODEL, input_tokens_max=50, max_tokens=10, text=f"{tag} {i}")
        admission = engine.admit(call)
        assert admission.reservation is not None
        engine.settle(admission.reservation, Usage(input_tokens=20, output_tokens=5))


def _frames(wal_bytes: int) -> int:
    return max(0, (wal_bytes - WAL_HEADER_BYTES) // FRAME_BYTES)


def test_a_commit_checkpoints_by_itself_once_the_wal_passes_the_backstop(tmp_path: Path) -> None:
    """With checkpoints deferred and none run, the WAL never grows past the backstop plus one commit's frames
    (the same writes with the gateway's backstop and no rounds grow it well past that)."""
    backstop, per_commit_max = 40, 30  # an admit or a settle writes far fewer pages than 30
    largest = {}
    for name, pages in (("small", backstop), ("gateway", WAL_BACKSTOP_PAGES)):
        engine, store = _engine(tmp_path / f"{name}.db")
        store.defer_checkpoints(pages)
        checkpoints = WalCheckpoints(store, busy=lambda: True)
        largest[name] = 0
        for batch in range(30):
            _pairs(engine, 5, f"b{batch}")
            largest[name] = max(largest[name], _frames(checkpoints.wal_bytes()))
        store.close()
    assert largest["small"] <= backstop + per_commit_max
    assert largest["gateway"] > 3 * (backstop + per_commit_max)


def test_defer_checkpoints_refuses_a_zero_backstop(tmp_path: Path) -> None:
    """A backstop of 0 pages would turn SQLite's own bound off, so it is refused."""
    store = SQLiteStore(tmp_path / "ledger.db")
    with pytest.raises(ValueError, match="unbounded"):
        store.defer_checkpoints(0)
    store.close()


def test_rounds_keep_the_wal_to_about_one_rounds_writes(tmp_path: Path) -> None:
    """A PASSIVE round between batches lets the WAL start over, so its file stays at one batch's size, not the sum."""
    engine, store = _engine(tmp_path / "ledger.db")
    store.defer_checkpoints(WAL_BACKSTOP_PAGES)
    checkpoints = WalCheckpoints(store, busy=lambda: True)  # calls in flight: never TRUNCATE
    copied_per_round = []
    for batch in range(12):
        _pairs(engine, 10, f"b{batch}")
        result = checkpoints.once()
        assert result is not None
        busy, frames, copied = result
        assert busy == 0 and copied == frames  # complete: every frame is in the database file
        copied_per_round.append(frames)
    written = sum(copied_per_round)
    assert _frames(checkpoints.wal_bytes()) <= max(copied_per_round) + 1
    assert written > 5 * max(copied_per_round)  # without the rounds the WAL would hold all of it
    store.close()


def test_an_idle_round_empties_the_wal_and_a_busy_one_does_not(tmp_path: Path) -> None:
    """With calls in flight rounds stay PASSIVE; once idle (nothing in flight, nothing written) TRUNCATE empties it."""
    engine, store = _engine(tmp_path / "ledger.db")
    store.defer_checkpoints(WAL_BACKSTOP_PAGES)
    in_flight = [True]
    checkpoints = WalCheckpoints(store, busy=lambda: in_flight[0])
    _pairs(engine, 10, "x")
    checkpoints.once()
    checkpoints.once()
    assert checkpoints.wal_bytes() > 0
    in_flight[0] = False
    checkpoints.once()  # nothing written since the last round and nothing in flight
    assert checkpoints.wal_bytes() == 0
    assert checkpoints.once() is None  # nothing left to do
    _pairs(engine, 3, "after")  # the ledger goes on after a TRUNCATE
    assert len(list(store.usage_records())) == 13
    store.close()


def test_the_sqlite_store_is_checkpointed_and_memory_is_not() -> None:
    """The upkeep checkpoints a SQLite ledger (it has ``path``, ``defer_checkpoints`` and ``checkpoint``)."""
    sqlite_store = SQLiteStore(":memory:")
    assert isinstance(sqlite_store, Checkpointed)
    assert sqlite_store.checkpoint() is None  # no WAL in memory
    assert not isinstance(build_engine(db_url="memory://", policy=stub_policy()).store, Checkpointed)
    sqlite_store.close()


def test_a_serving_gateway_empties_its_wal_once_idle(make_gateway: GatewayFactory) -> None:
    """After calls, a gateway left idle has its WAL emptied by its upkeep (the checkpoints run in the worker)."""
    gw = make_gateway()
    for i in range(5):
        gw.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"call {i}"}])
    wal = Path(f"{gw.engine.store.path}-wal")  # type: ignore[attr-defined]
    wait_for(lambda: wal.exists() and wal.stat().st_size == 0, "the upkeep to empty the WAL")
    assert len(list(gw.engine.store.usage_records())) == 5
