"""The statements of the PostgreSQL ledger's reserve, settle and release paths (texts only, no I/O).

``{}`` slots take the accounts' condition (:data:`BY_ID` or :data:`BY_KEY`); the one-trip
calls name the server functions of migration 0008.
"""

from __future__ import annotations

from comptroller.storage.postgres_escrow import ACCOUNT_SELECT, APPLY_CTE
from comptroller.storage.postgres_rows import RES_COLS, USAGE_COLS

__all__ = [
    "BY_ID", "BY_KEY", "CORRECT_WRITE", "DUE", "FIRE_ALERTS", "INSERT_HOLD", "LOCK_STATES", "READ_ACCOUNTS",
    "RESERVE_BATCH", "RESERVE_ONE_TRIP", "RESERVE_READ", "SETTLE_BATCH", "SETTLE_ONE_TRIP", "SETTLE_READ",
    "SETTLE_WRITE",
]

BY_ID = "a.id = ANY(%s)"
BY_KEY = "(a.budget_id, a.scope, a.period_key) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))"
_LOCK_ACCOUNTS = f"{ACCOUNT_SELECT} WHERE {{}} AND (a.shards = 0 OR %s) ORDER BY a.id FOR UPDATE OF a"
"""The call's accounts locked (ascending id): the unsharded ones, and the sharded ones too when the flag is on."""
_READ_SHARDED = f"{ACCOUNT_SELECT} WHERE {{}} AND a.shards > 0 AND NOT %s"
"""The call's sharded accounts with their totals, not locked (the fast path)."""
READ_ACCOUNTS = f"SELECT * FROM ({_LOCK_ACCOUNTS}) AS l UNION ALL SELECT * FROM ({_READ_SHARDED}) AS u"
"""Both, in one statement (the unsharded ones first, locked)."""
INSERT_HOLD = (f"INSERT INTO reservations ({RES_COLS}, shard_ids) VALUES "
               "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s, %s, %s, {})")
SETTLE_WRITE = (f"WITH {APPLY_CTE}, logged AS (INSERT INTO usage_log ({USAGE_COLS}) VALUES "
                f"({', '.join(['%s'] * 21)})) UPDATE reservations SET state = 'settled' FROM moved WHERE id = %s")
"""Move the money, log the usage and mark the hold settled, in one statement."""
CORRECT_WRITE = (
    "WITH logged AS (UPDATE usage_log SET resolved_at = %s, input_tokens = %s, output_tokens = %s, "
    "cache_read_tokens = %s, cache_write_tokens = %s, cache_write_1h_tokens = %s, cost_mc = %s, outcome = %s "
    "WHERE reservation_id = %s) UPDATE reservations SET state = 'settled' WHERE id = %s")
"""Correct an ``unknown_outcome`` ceiling charge to the real cost (its one usage row rewritten)."""
FIRE_ALERTS = ("UPDATE accounts SET alert_pct_fired = f.pct FROM unnest(%s::bigint[], %s::integer[]) AS f(id, pct) "
               "WHERE accounts.id = f.id")
LOCK_STATES = ("SELECT kind, key, version, record FROM states WHERE (kind, key) IN "
               "(SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY kind, key FOR UPDATE")
RESERVE_ONE_TRIP = f"SELECT * FROM ledger_reserve({', '.join(['%s'] * 21)})"
SETTLE_ONE_TRIP = "SELECT * FROM ledger_settle(%s, %s, %s, %s, %s, %s, %s, %s)"
DUE = "EXISTS (SELECT 1 FROM reservations WHERE state = 'pending' AND expires_at <= %s)"
RESERVE_READ = (f"SELECT m.*, a.* FROM (SELECT (SELECT value FROM meta WHERE key = 'budgets_version'), {DUE}, "
                "(SELECT id FROM reservations WHERE idempotency_key = %s)) AS m(version, due, existing) "
                "LEFT JOIN LATERAL ({}) AS a ON true")
"""The budgets version, a due lease, a known key, then the call's accounts (one row each, or one empty)."""
_SETTLE_ACCOUNTS = ("SELECT x.*, b.id, b.level, b.scope, b.period, b.timezone, b.limit_mc, b.alerts FROM "
                    f"({ACCOUNT_SELECT} WHERE {{}} ORDER BY a.id {{}}) AS x "
                    "LEFT JOIN budgets b ON b.id = x.budget_id ORDER BY x.id")
SETTLE_READ = (
    f"SELECT r.*, x.* FROM (SELECT {RES_COLS}, {DUE}, shard_ids FROM reservations WHERE id = %s FOR UPDATE) AS r "
    "LEFT JOIN LATERAL (SELECT * FROM ({}) AS l UNION ALL SELECT * FROM ({}) AS u) AS x ON true".format(
        _SETTLE_ACCOUNTS.format("a.id = ANY(r.account_ids) AND a.shards = 0", "FOR UPDATE OF a"),
        _SETTLE_ACCOUNTS.format("a.id = ANY(r.account_ids) AND a.shards > 0", "")))
"""The reservation locked, a due lease, where its money sits, then its accounts with their totals and budgets:
the unsharded ones locked (ascending id), the sharded ones not."""


RESERVE_BATCH = ("SELECT * FROM ledger_reserve_batch(%s, %s, %s::timestamptz[], %s::text[], %s::text[], %s::text[], "
                 "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], "
                 "%s::bigint[], %s::timestamptz[], %s::boolean[], %s::boolean[], %s::text[], %s::integer[], "
                 "%s::bigint[], %s::bigint[], %s::integer[])")
"""Group commit of reserves (migration 0009): one call for a batch of them."""
SETTLE_BATCH = ("SELECT * FROM ledger_settle_batch(%s, %s::timestamptz[], %s::text[], %s::bigint[], %s::bigint[], "
                "%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])")
"""Group commit of settles (migration 0009): one call for a batch of them."""
