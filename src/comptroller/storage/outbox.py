"""The durable local outbox: call outcomes the ledger could not take yet, kept until it has them.

A provider bills every call it serves, so a settle must survive a ledger outage
(DESIGN.md rule 12). When a settle or release fails (``LedgerUnavailableError``, a
locked or unwritable SQLite file), the edge writes the outcome
(:class:`~comptroller.domain.ledger.SettleOutcome`: reservation id, time, usage,
cost) here, and a deliverer hands it to the ledger
(:meth:`comptroller.engine.Engine.deliver`) until the ledger answers. Delivery is
idempotent by reservation id: a settle of a settled call is a no-op, and an outcome
arriving after the lease was charged as ``unknown_outcome`` corrects that charge.

The outbox is one SQLite file (its own, never the ledger's, so a locked ledger does
not lock it) in WAL mode with ``synchronous = FULL``: a write returns only once it is
on disk (SQLite docs, "PRAGMA synchronous"), so a worker killed right after keeps its
outcome. Every worker of a gateway shares the file, so a restarted worker (or its
sibling) drains what a dead one left; two deliverers racing on one outcome are safe
because delivery is idempotent. Rows are kept after delivery with the ledger's code
(an audit trail) and pruned after :data:`KEEP_DELIVERED_S`.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from comptroller.domain.ledger import SettleOutcome
from comptroller.domain.usage import Usage
from comptroller.errors import LedgerUnavailableError

__all__ = ["KEEP_DELIVERED_S", "Outbox", "default_outbox_path"]

KEEP_DELIVERED_S = 7 * 24 * 3600.0
"""How long delivered outcomes stay in the file (seconds) before :meth:`Outbox.prune` drops them."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    reservation_id TEXT PRIMARY KEY, at REAL NOT NULL, is_release INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL, cache_write_1h_tokens INTEGER NOT NULL, cost_mc INTEGER NOT NULL,
    written_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, delivered_at REAL, code TEXT)
"""
_LEDGER_FAILURES = (LedgerUnavailableError, sqlite3.Error, OSError)
_COLS = ("reservation_id, at, is_release, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
         "cache_write_1h_tokens, cost_mc")


def default_outbox_path(ledger: object) -> str:
    """Where a gateway keeps its outbox when ``[gateway] outbox_path`` is not set.

    Args:
        ledger: the store. A SQLite ledger file (``path``) gets its outbox beside it,
            ``<file>.outbox``; a networked one (``where``: its URL without password) gets one
            in the state directory, ``$XDG_STATE_HOME/comptroller`` (default ``~/.local/state``),
            named by a digest of the URL; an in-memory ledger an in-memory outbox (``:memory:``:
            both die with the process).
    """
    path, where = getattr(ledger, "path", None), getattr(ledger, "where", None)
    if isinstance(path, str) and path != ":memory:":
        return f"{path}.outbox"
    if not isinstance(where, str):
        return ":memory:"
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "comptroller"
    return str(state / f"outbox-{hashlib.sha256(where.encode('utf-8')).hexdigest()[:16]}.db")


def _ts(at: datetime) -> float:
    return at.timestamp()


class Outbox:
    """Outcomes waiting for the ledger, in one SQLite file shared by a gateway's workers.

    Args:
        path: the file (created with its directory if missing), or ``:memory:`` (not durable:
            for an in-memory ledger).
        busy_timeout_s: how long a write waits for another worker's lock, seconds.

    Raises:
        sqlite3.OperationalError: if the file cannot be opened or written.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout_s)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute(_SCHEMA)

    def put(self, outcome: SettleOutcome) -> bool:
        """Keep ``outcome`` durably (on disk when this returns); False if one for its reservation is kept already
        (the first stands: a call has one outcome)."""
        usage = outcome.usage or Usage(0, 0)
        with self._lock:
            cur = self._conn.execute(
                f"INSERT OR IGNORE INTO outcomes ({_COLS}, written_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (outcome.reservation_id, _ts(outcome.at), int(outcome.is_release), usage.input_tokens,
                 usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens,
                 usage.cache_write_1h_tokens, outcome.cost_mc, _ts(datetime.now(UTC))))
            return cur.rowcount == 1

    def pending(self, limit: int = 100) -> list[SettleOutcome]:
        """Outcomes not yet delivered, oldest first, at most ``limit``."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLS} FROM outcomes WHERE delivered_at IS NULL "
                                      "ORDER BY written_at, reservation_id LIMIT ?", (limit,)).fetchall()
        return [SettleOutcome(r[0], datetime.fromtimestamp(r[1], UTC),
                              None if r[2] else Usage(r[3], r[4], r[5], r[6], r[7]), r[8]) for r in rows]

    def delivered(self, reservation_id: str, code: str, now: datetime) -> None:
        """Record that the ledger has the outcome (``code``: its answer); it is not offered again."""
        with self._lock:
            self._conn.execute("UPDATE outcomes SET delivered_at = ?, code = ? WHERE reservation_id = ?",
                               (_ts(now), code, reservation_id))

    def failed(self, reservation_id: str) -> None:
        """Count a delivery attempt that the ledger could not take (for metrics and logs)."""
        with self._lock:
            self._conn.execute("UPDATE outcomes SET attempts = attempts + 1 WHERE reservation_id = ?",
                               (reservation_id,))

    def count(self) -> int:
        """How many outcomes wait for the ledger."""
        with self._lock:
            row = self._conn.execute("SELECT count(*) FROM outcomes WHERE delivered_at IS NULL").fetchone()
        return int(row[0])

    def oldest_pending_age_s(self, now: datetime) -> float | None:
        """Seconds since the oldest outcome still waiting was kept (None: nothing waits)."""
        with self._lock:
            row = self._conn.execute("SELECT min(written_at) FROM outcomes WHERE delivered_at IS NULL").fetchone()
        return None if row[0] is None else max(0.0, _ts(now) - float(row[0]))

    def prune(self, now: datetime, keep_s: float = KEEP_DELIVERED_S) -> int:
        """Drop outcomes delivered more than ``keep_s`` seconds before ``now``; the number dropped."""
        with self._lock:
            cur = self._conn.execute("DELETE FROM outcomes WHERE delivered_at IS NOT NULL AND delivered_at < ?",
                                     (_ts(now - timedelta(seconds=keep_s)),))
            return cur.rowcount

    def drain(self, deliver: Callable[[SettleOutcome], str], now: Callable[[], datetime], *,
              limit: int = 100) -> tuple[int, int]:
        """Hand pending outcomes to ``deliver`` (``Engine.deliver``), oldest first, until one fails.

        An outcome the ledger answered is marked delivered with the ledger's code; the first
        that raises a ledger failure (``LedgerUnavailableError``, ``sqlite3.Error``, ``OSError``)
        is counted as an attempt and ends the round (the ledger is down: retry later).

        Returns:
            ``(delivered, still pending)``.
        """
        delivered = 0
        for outcome in self.pending(limit):
            try:
                code = deliver(outcome)
            except _LEDGER_FAILURES:
                self.failed(outcome.reservation_id)
                break
            self.delivered(outcome.reservation_id, str(code), now())
            delivered += 1
        return delivered, self.count()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()
