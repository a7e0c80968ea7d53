"""The API key a call came with, and its shared-group flag, survive a round trip through every backend.

Spend per key (issue 15) and the dashboard's key slices read ``Attribution.key_id`` back
from the hold and from the usage log, so every store must keep it exactly (and keep
None as None for in-process calls).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from comptroller.domain.codes import Code
from comptroller.domain.scopes import Attribution
from comptroller.ports import LedgerStore
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import T0, USAGE, reserve_request


@pytest.mark.parametrize(("key_id", "shared"), [("k_7f3a", False), (None, False), ("k_group", True)])
def test_key_id_and_shared_flag_round_trip(store: LedgerStore, key_id: str | None, shared: bool) -> None:
    who = Attribution(namespace="ns", tenant="t1", agent="a1", conversation="room" if shared else None,
                      conversation_shared=shared, key_id=key_id)
    reserved = store.reserve(reserve_request("call-1", 500, who=who), T0)
    assert reserved.code is Code.OK and reserved.reservation is not None
    held = store.reservation(reserved.reservation.id)
    assert held is not None and held.attribution == who
    settled = store.settle(reserved.reservation.id, USAGE, 120, T0)
    assert settled.code is Code.SETTLED
    (row,) = [r for r in store.usage_records() if r.reservation_id == reserved.reservation.id]
    assert row.attribution == who
    assert (row.attribution.key_id, row.attribution.conversation_shared, row.cost_mc) == (key_id, shared, 120)


def test_a_version_3_sqlite_file_gains_the_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    old = SQLiteStore(str(path))
    first = old.reserve(reserve_request("old-call", 300), T0)
    assert first.reservation is not None
    old.settle(first.reservation.id, USAGE, 90, T0)
    old.close()
    with sqlite3.connect(path) as conn:  # take the file back to schema 3: no key ids anywhere
        conn.execute("ALTER TABLE reservations DROP COLUMN key_id")
        conn.execute("ALTER TABLE usage_log DROP COLUMN key_id")
        conn.execute("ALTER TABLE usage_log DROP COLUMN conversation_shared")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    upgraded = SQLiteStore(str(path))
    try:
        (row,) = list(upgraded.usage_records())
        assert (row.cost_mc, row.attribution.key_id, row.attribution.conversation_shared) == (90, None, False)
        who = Attribution(namespace="ns", tenant="t1", agent="a1", key_id="k_new")
        second = upgraded.reserve(reserve_request("new-call", 300, who=who), T0)
        assert second.reservation is not None
        upgraded.settle(second.reservation.id, USAGE, 40, T0)
        assert [r.attribution.key_id for r in upgraded.usage_records()] == [None, "k_new"]
    finally:
        upgraded.close()
