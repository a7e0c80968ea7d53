"""Escrow shards in PostgreSQL: the statements behind :mod:`comptroller.domain.escrow`.

A sharded account (``accounts.shards > 0``, migration 0007) keeps its money in
``account_shards`` rows; its totals are its own columns plus the sums over its shards
(:data:`ACCOUNT_SELECT`). The store uses two paths:

* **fast** (no account lock): a reserve reads a sharded account without locking it,
  decides on that snapshot, then holds its ceiling on one shard with room in its
  write (the server function ``escrow_hold``, :data:`HOLD_VALUE`); if every shard is
  dry the function raises ``escrow_dry`` (:func:`is_dry`) and the transaction rolls
  back before it commits anything;
* **slow** (after ``escrow_dry``, a stale ``shard_limit_mc``, a ceiling miss): the
  account rows are locked, then every shard of them (:func:`lock_shards`), the caps
  are recomputed by :func:`comptroller.domain.escrow.rebalance` and written
  (:func:`write_caps`) in the same transaction as the operation.

Settles, releases and expiries move money on the row or shard the hold names
(``reservations.shard_ids``, -1: the account row) with the server function
``escrow_apply`` (:func:`apply`), which locks shard rows in ascending (account,
shard) order, as ``escrow_hold`` does: the global lock order is reservations, then
accounts (ascending id), then defense states, then shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import errors
from psycopg.rows import TupleRow

from comptroller.domain.escrow import Shard, rebalance, totals
from comptroller.storage.postgres_rows import ACCOUNT_ROW, Conn

__all__ = [
    "ACCOUNT_SELECT",
    "ACCOUNT_SHARDS",
    "APPLY_CTE",
    "HOLD_VALUE",
    "Move",
    "apply",
    "apply_params",
    "create_accounts",
    "holds",
    "is_dry",
    "lock_shards",
    "rebalance_all",
    "rebalanced",
    "recapped",
    "with_shards",
    "write_caps",
]

ACCOUNT_SELECT = (
    "SELECT a.id, a.budget_id, a.scope, a.period_key, a.settled_mc + coalesce(s.settled_mc, 0), "
    "a.reserved_mc + coalesce(s.reserved_mc, 0), a.alert_pct_fired, a.shards, a.shard_limit_mc, a.settled_mc, "
    "a.reserved_mc FROM accounts a LEFT JOIN LATERAL (SELECT sum(settled_mc)::bigint AS settled_mc, "
    "sum(reserved_mc)::bigint AS reserved_mc FROM account_shards WHERE account_id = a.id) AS s ON a.shards > 0")
"""An account with its totals: ``(id, budget_id, scope, period_key, settled_mc, reserved_mc, alert_pct_fired,
shards, shard_limit_mc, own settled_mc, own reserved_mc)``; append ``WHERE``/``ORDER BY``/``FOR UPDATE OF a``."""
ACCOUNT_SHARDS = 7
"""Where ``ACCOUNT_SELECT``'s ``shards`` column is (the limit the caps were split from, and the row's own money,
follow it)."""

APPLY_CTE = "moved AS (SELECT escrow_apply(%s::bigint[], %s::integer[], %s::bigint[], %s::bigint[]))"
"""A ``WITH`` item moving money (:func:`apply_params`); the statement must read ``moved`` for it to run."""

HOLD_VALUE = "escrow_hold(%s::bigint[], %s::integer[], %s)"
"""An expression holding an amount on accounts (ids, start shards with -1 for a row, amount); the shard of each."""

Move = tuple[int, int]
"""Where money sits: ``(account id, shard)``, shard -1 for the account row itself."""


def is_dry(exc: Exception) -> bool:
    """True if ``exc`` is ``escrow_hold``'s answer that a sharded account had no shard with room."""
    return isinstance(exc, errors.RaiseException) and exc.diag.message_primary == "escrow_dry"


def apply_params(moves: Mapping[Move, tuple[int, int]]) -> tuple[list[int], list[int], list[int], list[int]]:
    """The parameters of :data:`APPLY_CTE` for ``(settled_mc, reserved_mc)`` deltas by row or shard."""
    keys = sorted(moves)
    return [k[0] for k in keys], [k[1] for k in keys], [moves[k][0] for k in keys], [moves[k][1] for k in keys]


def apply(conn: Conn, moves: Mapping[Move, tuple[int, int]]) -> None:
    """Add ``(settled_mc, reserved_mc)`` deltas to each row or shard (one statement, locks in order)."""
    if moves:
        conn.execute("SELECT escrow_apply(%s::bigint[], %s::integer[], %s::bigint[], %s::bigint[])",
                     apply_params(moves))


def lock_shards(conn: Conn, account_ids: Sequence[int]) -> dict[int, list[Shard]]:
    """Lock every shard of the accounts (ascending account, shard) and read them, by account id."""
    rows = conn.execute("SELECT account_id, shard, cap_mc, settled_mc, reserved_mc FROM account_shards "
                        "WHERE account_id = ANY(%s) ORDER BY account_id, shard FOR UPDATE",
                        (list(account_ids),)).fetchall()
    found: dict[int, list[Shard]] = {i: [] for i in account_ids}
    for row in rows:
        found[row[0]].append(Shard(row[2], row[3], row[4]))
    return found


def write_caps(conn: Conn, plans: Mapping[int, tuple[int, Sequence[Shard]]]) -> None:
    """Write rebalanced caps, and the limit they were split from, for each ``account id -> (limit, shards)``."""
    if not plans:
        return
    ids, shard_nos, caps = [], [], []
    for account_id, (_, shards) in plans.items():
        for index, shard in enumerate(shards):
            ids.append(account_id)
            shard_nos.append(index)
            caps.append(shard.cap_mc)
    conn.execute("UPDATE account_shards SET cap_mc = c.cap FROM unnest(%s::bigint[], %s::integer[], %s::bigint[]) "
                 "AS c(id, shard, cap) WHERE account_id = c.id AND account_shards.shard = c.shard",
                 (ids, shard_nos, caps))
    conn.execute("UPDATE accounts SET shard_limit_mc = p.lim FROM unnest(%s::bigint[], %s::bigint[]) AS p(id, lim) "
                 "WHERE accounts.id = p.id", (list(plans), [limit for limit, _ in plans.values()]))


def create_accounts(conn: Conn, keys: Sequence[tuple[str, str, str]], shards: Sequence[int]) -> None:
    """Insert empty accounts with ``shards[i]`` shards each (caps 0: the first reserve rebalances them).

    One statement, so an account and its shards appear together; an account another
    replica created first is left as it is.
    """
    params: tuple[Any, ...] = ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], list(shards))
    conn.execute(
        "WITH made AS (INSERT INTO accounts (budget_id, scope, period_key, shards) SELECT * FROM "
        "unnest(%s::text[], %s::text[], %s::text[], %s::integer[]) ON CONFLICT DO NOTHING RETURNING id, shards) "
        "INSERT INTO account_shards (account_id, shard) SELECT id, generate_series(0, shards - 1) FROM made "
        "WHERE shards > 0", params)


def rebalance_all(conn: Conn) -> int:
    """Re-split the headroom of every sharded account from its budget's current limit, in this transaction.

    Locks the sharded accounts (ascending id), then their shards, so it waits for the holds
    in flight and no reserve sees a half-written plan. Accounts of deleted budgets are left
    as they are. Returns how many accounts were rebalanced.
    """
    rows = conn.execute("SELECT a.id, b.limit_mc FROM accounts a JOIN budgets b ON b.id = a.budget_id "
                        "WHERE a.shards > 0 ORDER BY a.id FOR UPDATE OF a").fetchall()
    limits = {r[0]: r[1] for r in rows}
    plans = {}
    for account_id, shards in lock_shards(conn, sorted(limits)).items():
        planned = rebalance(limits[account_id], shards) if shards else None
        if planned is not None:
            plans[account_id] = (limits[account_id], planned)
    write_caps(conn, plans)
    return len(plans)


def holds(account_ids: Sequence[int], shard_ids: Sequence[int] | None) -> list[Move]:
    """Where a reservation's money sits on each of its accounts (a hold made before shards: the rows)."""
    return list(zip(account_ids, shard_ids if shard_ids is not None else [-1] * len(account_ids), strict=True))


def with_shards(row: TupleRow, shards: Sequence[Shard] | None) -> TupleRow:
    """An account row whose totals are recomputed from its locked shards (and its own money)."""
    if not shards:
        return row
    settled, reserved = totals(shards)
    return (*row[:4], row[9] + settled, row[10] + reserved, *row[6:])


def rebalanced(ceiling_mc: int, limits_mc: Sequence[int], ids: Sequence[int], starts: Sequence[int],
               locked: Mapping[int, Sequence[Shard]]) -> dict[int, tuple[int, tuple[Shard, ...]]] | None:
    """New caps for each locked sharded account (the slow path of a reserve), its ceiling going to the shard it
    tries first (``starts``); ``limits_mc``: each account's budget limit. None if one cannot hold the ceiling."""
    plans: dict[int, tuple[int, tuple[Shard, ...]]] = {}
    for limit_mc, account_id, start in zip(limits_mc, ids, starts, strict=True):
        shards = locked.get(account_id)
        if shards:
            planned = rebalance(limit_mc, shards, need_mc=ceiling_mc, preferred=start)
            if planned is None:
                return None
            plans[account_id] = (limit_mc, planned)
    return plans


def recapped(conn: Conn, accounts: Sequence[TupleRow], moves: Mapping[Move, tuple[int, int]]
              ) -> dict[int, tuple[int, tuple[Shard, ...]]]:
    """Lock the shards of the sharded accounts, apply ``moves`` to them in memory, and rebalance each from its
    budget's limit: after a charge past a hold, no shard keeps room the account no longer has."""
    limits = {r[0]: r[ACCOUNT_ROW + 5] for r in accounts if r[ACCOUNT_SHARDS] > 0 and r[ACCOUNT_ROW] is not None}
    locked = lock_shards(conn, sorted(limits))
    plans: dict[int, tuple[int, tuple[Shard, ...]]] = {}
    for account_id, shards in locked.items():
        after = list(shards)
        for (moved_id, index), (settled_mc, reserved_mc) in moves.items():
            if moved_id == account_id and 0 <= index < len(after):
                s = after[index]
                after[index] = Shard(s.cap_mc, s.settled_mc + settled_mc, s.reserved_mc + reserved_mc)
        planned = rebalance(limits[account_id], after) if after else None
        if planned is not None:
            plans[account_id] = (limits[account_id], planned)
    return plans
