"""The SQLite store skips reads it can prove unneeded, and never a lease or a budget it needs.

A write transaction reads no expired leases while it is before the earliest pending expiry it
knows of and no other connection has committed; it reads no budget version while no other
connection has committed. These tests run random sequences of the operations that move
leases, time and budgets, with another connection committing now and then, and check after
every write that the file holds no pending lease expired at that time (a second connection
reads it) and that a budget changed by either connection is the one the next reserve uses.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from comptroller.domain.budgets import Budget
from comptroller.domain.codes import Code
from comptroller.domain.scopes import Level
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import T0, USAGE, attribution, reserve_request

_op = st.one_of(
    st.tuples(st.just("reserve"), st.integers(min_value=1, max_value=120)),
    st.tuples(st.just("settle"), st.integers(min_value=0, max_value=30)),
    st.tuples(st.just("release"), st.integers(min_value=0, max_value=30)),
    st.tuples(st.just("renew"), st.integers(min_value=0, max_value=30)),
    st.tuples(st.just("advance"), st.integers(min_value=1, max_value=90)),
    st.tuples(st.just("foreign"), st.integers(min_value=0, max_value=1)),  # another connection commits
)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(_op, min_size=1, max_size=40))
def test_no_pending_lease_outlives_its_expiry_past_a_write(tmp_path_factory: object, ops: list[tuple[str, int]]
                                                           ) -> None:
    folder: Path = tmp_path_factory.mktemp("ledger")  # type: ignore[attr-defined]
    store = SQLiteStore(folder / "ledger.db")
    other = sqlite3.connect(folder / "ledger.db", isolation_level=None)
    try:
        now, held, n = T0, [], 0
        for kind, arg in ops:
            if kind == "reserve":
                n += 1
                result = store.reserve(reserve_request(f"k{n}", 10, ttl_s=arg), now)
                if result.reservation is not None:
                    held.append(result.reservation)
            elif kind in ("settle", "release", "renew") and held:
                reservation = held[arg % len(held)]
                if kind == "settle":
                    store.settle(reservation.id, USAGE, 5, now)
                elif kind == "release":
                    store.release(reservation.id, now)
                else:
                    store.renew(reservation.id, now, 30)
            elif kind == "advance":
                now += timedelta(seconds=arg)
                if arg % 3:
                    continue
                store.expire(now)  # the upkeep's sweep now and then
            elif kind == "foreign":  # a commit the store did not make (another process's write)
                other.execute("INSERT OR REPLACE INTO meta VALUES ('foreign', ?)", (str(arg),))
                continue
            else:
                continue
            # a write transaction at `now` ran: nothing pending has expired by then
            stale = other.execute("SELECT count(*) FROM reservations WHERE state = 'pending' AND expires_at <= ?",
                                  (now.timestamp(),)).fetchone()[0]
            assert stale == 0, (kind, now)
    finally:
        other.close()
        store.close()


def test_a_short_lease_taken_after_the_bound_was_read_still_expires(tmp_path: Path) -> None:
    """The bound is read with one long lease pending; a shorter one then lowers it, and expires in time."""
    store = SQLiteStore(tmp_path / "ledger.db")
    long = store.reserve(reserve_request("long", 10, ttl_s=100), T0).reservation
    store.reserve(reserve_request("other", 10, ttl_s=100), T0)  # a second scan with no writer between: bound read
    short = store.reserve(reserve_request("short", 10, ttl_s=5), T0).reservation
    assert long is not None and short is not None
    assert store.settle(long.id, USAGE, 5, T0 + timedelta(seconds=10)).code is Code.SETTLED
    stored = store.reservation(short.id)
    assert stored is not None and stored.state.value == "expired"
    store.close()


def test_a_budget_written_by_another_connection_or_by_the_store_is_the_one_the_next_reserve_uses(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ledger.db")
    other = SQLiteStore(tmp_path / "ledger.db")
    who = attribution()
    scope = dict(who.scopes())[Level.TENANT]
    store.put_budget(Budget(level=Level.TENANT, scope=scope, period="total", limit_mc=100))
    for i in range(3):  # the version read once, then skipped while no one else commits
        assert store.reserve(reserve_request(f"a{i}", 10, who=who), T0).code is Code.OK
    other.put_budget(Budget(level=Level.TENANT, scope=scope, period="total", limit_mc=35))
    assert store.reserve(reserve_request("b", 10, who=who), T0).code is Code.BUDGET_EXCEEDED  # 30 held + 10 > 35
    store.put_budget(Budget(level=Level.TENANT, scope=scope, period="total", limit_mc=1_000))
    assert store.reserve(reserve_request("c", 10, who=who), T0).code is Code.OK
    store.delete_budget(Budget(level=Level.TENANT, scope=scope, period="total", limit_mc=1_000).id)
    other.put_budget(Budget(level=Level.TENANT, scope=scope, period="total", limit_mc=40))
    assert store.reserve(reserve_request("d", 10, who=who), T0).code is Code.BUDGET_EXCEEDED  # 40 held
    other.close()
    store.close()
