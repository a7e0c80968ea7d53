"""The expiry sweep of the PostgreSQL ledger: resolve leases whose time ran out.

A lease never sent returns its hold; a sent one is charged its ceiling as
``unknown_outcome`` (DESIGN.md rule 12: its call may have been billed), with its usage
row and event. Replicas sweep at once safely: each takes due reservations with
``FOR UPDATE SKIP LOCKED``, so every lease is resolved by exactly one of them. Locks
follow the store's global order: reservations, account rows (ascending id), shards.
"""

from __future__ import annotations

from datetime import datetime

from comptroller.storage.postgres_escrow import Move, apply, holds
from comptroller.storage.postgres_pool import Attempt, RetryError
from comptroller.storage.postgres_rows import (
    RES_COLS,
    RES_N,
    USAGE_COLS,
    Conn,
    insert_events,
    reservation_of,
    rollback,
    usage_row,
)
from comptroller.storage.rows import unknown_outcome_event, unknown_outcome_record

__all__ = ["SWEEP_BATCH", "sweep", "sweep_first"]

SWEEP_BATCH = 500
"""Due leases one sweep transaction resolves at most."""


def sweep_first(conn: Conn, attempt: Attempt, now: datetime) -> None:
    """A lease is due: roll back, sweep a batch in a transaction of its own, and retry the operation
    (:class:`RetryError`), once per operation; later calls return and the operation goes on."""
    if not attempt.swept:
        rollback(conn)
        sweep(conn, now, SWEEP_BATCH)
        attempt.swept = True
        raise RetryError


def sweep(conn: Conn, now: datetime, batch: int) -> int:
    """Resolve a batch of due leases: a sent one is charged its ceiling (``unknown_outcome``), another returns."""
    conn.execute("BEGIN")
    rows = conn.execute(
        f"SELECT {RES_COLS}, shard_ids FROM reservations WHERE state = 'pending' AND expires_at <= %s "
        "ORDER BY expires_at, id LIMIT %s FOR UPDATE SKIP LOCKED", (now, batch)).fetchall()
    if not rows:
        conn.execute("COMMIT")
        return 0
    due = [reservation_of(r) for r in rows]
    moves: dict[Move, tuple[int, int]] = {}
    for reservation, row in zip(due, rows, strict=True):
        charged = reservation.ceiling_mc if reservation.sent else 0
        for where in holds(row[15], row[RES_N]):
            settled, reserved = moves.get(where, (0, 0))
            moves[where] = (settled + charged, reserved - reservation.ceiling_mc)
    rows_ids = sorted({i for i, shard in moves if shard < 0})
    sent = [r for r in due if r.sent]
    with conn.pipeline():
        conn.execute("SELECT id FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (rows_ids,))
        apply(conn, moves)
        conn.execute("UPDATE reservations SET state = CASE WHEN sent THEN 'unknown_outcome' ELSE 'expired' END "
                     "WHERE id = ANY(%s)", ([r.id for r in due],))
        if sent:
            conn.cursor().executemany(f"INSERT INTO usage_log ({USAGE_COLS}) VALUES ({', '.join(['%s'] * 21)})",
                                      [usage_row(unknown_outcome_record(r, now)) for r in sent])
        insert_events(conn, [unknown_outcome_event(r, now) for r in sent])
        conn.execute("COMMIT")
    return len(due)
