"""Rows of the PostgreSQL ledger: column lists, row decoders and small statement helpers.

Shared by :mod:`comptroller.storage.postgres` (the store) and
:mod:`comptroller.storage.postgres_escrow` (its sharded accounts); no state, no pool.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import TupleRow

from comptroller.domain.admission import alert_thresholds_crossed
from comptroller.domain.budgets import Budget
from comptroller.domain.ledger import AccountView, Event, Reservation, ReservationState, UsageRecord
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.state import StateKey, StoredState
from comptroller.domain.usage import Usage
from comptroller.storage.keys import ApiKey
from comptroller.storage.rows import alert_event

__all__ = [
    "ACCOUNT_ROW", "BUDGET_COLS", "KEY_COLS", "POOL_PARAMS", "RES_COLS", "RES_N", "USAGE_COLS", "Conn",
    "alerts_crossed", "api_key_of", "attribution_of", "budget_of", "event_row", "insert_events", "key_columns",
    "record_of", "redact", "reservation_of", "rollback", "scalar", "split_url", "state_of", "usage_row", "why_not",
    "write_state",
]

Conn = psycopg.Connection[TupleRow]
"""A pooled connection returning tuples."""

ACCOUNT_ROW = 11
"""How many columns an account row read with its totals has (``postgres_escrow.ACCOUNT_SELECT``)."""

POOL_PARAMS = {"pool_min_size": "min_size", "pool_max_size": "max_size", "pool_timeout_s": "timeout_s",
               "escrow_shards": "escrow_shards"}
"""Store options a ledger URL may carry in its query (taken out before libpq sees it), by their option name."""


BUDGET_COLS = "id, level, scope, period, timezone, limit_mc, alerts"
RES_COLS = ("id, idempotency_key, namespace, tenant, agent, conversation, task, phase, model, ceiling_mc, "
             "input_tokens_max, output_tokens_max, created_at, expires_at, state, account_ids, sent, "
             "conversation_shared, key_id")
RES_N = 19
"""How many columns ``RES_COLS`` names (``_SETTLE_READ``'s due flag and accounts follow them)."""
USAGE_COLS = ("reservation_id, idempotency_key, namespace, tenant, agent, conversation, task, phase, model, "
               "reserved_at, resolved_at, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
               "cache_write_1h_tokens, cost_mc, ceiling_mc, outcome, conversation_shared, key_id")


def budget_of(row: Sequence[Any]) -> Budget:
    """A budget from its ``BUDGET_COLS`` row."""
    return Budget(level=Level(row[1]), scope=row[2], period=row[3], timezone=row[4], limit_mc=row[5],
                  alert_thresholds_pct=tuple(json.loads(row[6])))


def attribution_of(row: Sequence[Any], *, shared: bool = False, key_id: str | None = None) -> Attribution:
    """An attribution from its six columns; ``shared``: its conversation is a registered shared group;
    ``key_id``: the API key the call came with."""
    return Attribution(namespace=row[0], tenant=row[1], agent=row[2], conversation=row[3], task=row[4],
                       phase=row[5], conversation_shared=shared, key_id=key_id)


def reservation_of(row: Sequence[Any]) -> Reservation:
    """A reservation from its ``RES_COLS`` row."""
    return Reservation(
        id=row[0], idempotency_key=row[1], attribution=attribution_of(row[2:8], shared=bool(row[17]), key_id=row[18]),
        model=row[8],
        ceiling_mc=row[9], input_tokens_max=row[10], output_tokens_max=row[11],
        created_at=row[12], expires_at=row[13], state=ReservationState(row[14]), sent=bool(row[16]))


def record_of(row: Sequence[Any]) -> UsageRecord:
    """A usage record from its ``USAGE_COLS`` row."""
    return UsageRecord(
        reservation_id=row[0], idempotency_key=row[1], model=row[8],
        attribution=attribution_of(row[2:8], shared=bool(row[19]), key_id=row[20]),
        reserved_at=row[9], resolved_at=row[10], usage=Usage(row[11], row[12], row[13], row[14], row[15]),
        cost_mc=row[16], ceiling_mc=row[17], outcome=row[18])


def state_of(row: Sequence[Any]) -> StoredState:
    """A defense state from its ``(kind, key, version, record)`` row."""
    return StoredState(StateKey(row[0], row[1]), int(row[2]), row[3])


def event_row(e: Event) -> tuple[Any, ...]:
    """The ``events`` row of an event (detail as sorted JSON)."""
    return (e.ts, e.kind, e.code, e.level, e.scope, json.dumps(e.detail, sort_keys=True))


def key_columns(keys: Sequence[StateKey]) -> tuple[list[str], list[str]]:
    """The kinds and keys of ``keys``, deduplicated and sorted (the order state rows are locked in)."""
    ordered = sorted(set(keys))
    return [k.kind for k in ordered], [k.key for k in ordered]


def split_url(url: str) -> tuple[str, dict[str, float]]:
    """Separate the pool options (``pool_min_size``, ``pool_max_size``, ``pool_timeout_s``) from a libpq URL.

    Returns:
        The URL without them, and the options found (as numbers).

    Raises:
        ValueError: on a pool option that is not a number.
    """
    parts = urlsplit(url)
    kept, options = [], {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in POOL_PARAMS:
            try:
                options[POOL_PARAMS[name]] = float(value)
            except ValueError:
                raise ValueError(f"{name} in the ledger URL must be a number, got {value!r}") from None
        else:
            kept.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), options


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


KEY_COLS = "id, digest, tenant, agent, name, admin, models, created_at, revoked_at"


def api_key_of(row: Sequence[Any]) -> ApiKey:
    """An API key record from its ``KEY_COLS`` row."""
    return ApiKey(id=row[0], digest=row[1], tenant=row[2], agent=row[3], name=row[4], admin=row[5],
                  models=None if row[6] is None else tuple(row[6]), created_at=row[7], revoked_at=row[8])


def alerts_crossed(accounts: Sequence[TupleRow], delta_mc: int, now: datetime) -> tuple[list[Event], dict[int, int]]:
    """The alerts a charge of ``delta_mc`` crosses on the accounts, and each account's new highest threshold fired.

    ``accounts``: rows of :data:`ACCOUNT_ROW` account columns (id, budget id, scope, period,
    settled, reserved, alert fired, ...) followed by their budget's ``BUDGET_COLS``, in the
    reservation's order (alerts fire in it).
    """
    events: list[Event] = []
    fired: dict[int, int] = {}
    for row in accounts:
        if row[ACCOUNT_ROW] is None:  # the budget was deleted: no alerts
            continue
        view = AccountView(budget_of(row[ACCOUNT_ROW:]), row[2], row[3], row[4], row[5], row[6])
        for pct in alert_thresholds_crossed(view, row[4] + delta_mc):
            events.append(alert_event(view, pct, row[4] + delta_mc, now))
            fired[row[0]] = pct
    return events, fired


def why_not(conninfo: str, timeout_s: float) -> str:
    """Why a plain connection attempt fails (the pool only logs it), for the start-up error."""
    try:
        psycopg.connect(conninfo, connect_timeout=max(1, round(timeout_s))).close()
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return "the database answers now: try again"


def scalar(cur: psycopg.Cursor[TupleRow]) -> Any:
    """The first column of the first row, or None."""
    row = cur.fetchone()
    return None if row is None else row[0]


def rollback(conn: Conn) -> None:
    """Roll back the open transaction, if any, through ``Connection.rollback()``.

    That also makes psycopg forget the statements it believes prepared (and deallocates them), as
    a ``ROLLBACK`` statement sent with ``execute`` does only until psycopg prepares that statement
    itself (its sixth use). It matters after a failed pipeline: psycopg 3.3 records a statement as
    prepared when it queues its ``Parse`` in pipeline mode, and when an earlier statement of the
    pipeline fails the server skips that ``Parse``, so the name never exists and the next use
    failed with "prepared statement ... does not exist" (seen in the 4-process escrow race;
    tests/postgres/test_pg_prepared_after_abort.py).
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()


def write_state(conn: Conn, state: StoredState, before: StoredState | None) -> None:
    """Write a guard's state: update the locked row, or insert a new one (a racing insert retries the call)."""
    record = json.dumps(dict(state.record), sort_keys=True)
    if before is not None:
        conn.execute("UPDATE states SET version = %s, record = %s WHERE kind = %s AND key = %s",
                     (state.version, record, state.key.kind, state.key.key))
    else:
        conn.execute("INSERT INTO states (kind, key, version, record) VALUES (%s, %s, %s, %s)",
                     (state.key.kind, state.key.key, state.version, record))


def insert_events(conn: Conn, events: Sequence[Event]) -> None:
    """Append events (one batched statement)."""
    if events:
        conn.cursor().executemany("INSERT INTO events (ts, kind, code, level, scope, detail) "
                                  "VALUES (%s, %s, %s, %s, %s, %s)", [event_row(e) for e in events])


def usage_row(r: UsageRecord) -> tuple[Any, ...]:
    """The ``usage_log`` row of a record, in ``USAGE_COLS`` order."""
    a, u = r.attribution, r.usage
    return (r.reservation_id, r.idempotency_key, a.namespace, a.tenant, a.agent, a.conversation, a.task, a.phase,
            r.model, r.reserved_at, r.resolved_at, u.input_tokens, u.output_tokens, u.cache_read_tokens,
            u.cache_write_tokens, u.cache_write_1h_tokens, r.cost_mc, r.ceiling_mc, r.outcome, a.conversation_shared,
            a.key_id)
