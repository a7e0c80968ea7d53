"""The one state kind of the limits' rows, and the key prefix of each (issue 15).

Every row a call's limits read lives under kind ``limits``, so a store reads all of a call's
limit rows with one indexed ``kind = 'limits' AND key IN (...)`` (SQLite, PostgreSQL) beside the
defenses' kinds:

==========================  ==================================================================
key                         row
==========================  ==================================================================
``book:<namespace>``        :class:`~comptroller.domain.limit_book.LimitBook` (run-time limits)
``floor:<wallet account>``  :class:`~comptroller.domain.wallets.floors.FloorState`
``quota:<unit:level:...>``  :class:`~comptroller.domain.held_counts.HeldCount` of a quota period
``rate:<unit:level:scope>`` :class:`~comptroller.domain.rate_limits.Gcra`
==========================  ==================================================================
"""

from __future__ import annotations

from comptroller.domain.state import StateKey

__all__ = ["KIND", "row_key"]

KIND = "limits"
"""The state kind of every limit row."""


def row_key(prefix: str, rest: str) -> StateKey:
    """The key ``prefix:rest`` of kind :data:`KIND` (``prefix`` is one of book, floor, quota, rate)."""
    return StateKey(KIND, f"{prefix}:{rest}")
