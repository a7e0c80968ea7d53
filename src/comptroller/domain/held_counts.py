"""A count with holds: reserve a ceiling, settle it to the actual amount, release it; pure arithmetic.

Quotas in tokens or messages (:mod:`comptroller.domain.quotas`) and prepaid wallets
(:mod:`comptroller.domain.wallets.floors`) keep what the ledger keeps for money
(DESIGN.md rule 2; TigerBeetle's pending transfers): an amount ``settled`` so far and
the ``holds`` of calls in flight. A state row holds one :class:`HeldCount`; the guards
change it in the reservation's own transaction, so ``settled + held`` moves exactly
when the ledger's money does.

Leases. A hold carries its call's lease expiry. The ledger does not tell the guards
when a lease runs out (the expiry sweep runs no guard), and a renewed lease is not
renewed here, so a hold whose expiry has passed is *charged*: its amount moves into
``settled`` (the conservative charge of DESIGN.md rule 12: the call may have been
served) and its id is kept in ``charged``. A later settle corrects the charge to the
actual amount, and a later release takes it back. A charge nobody corrects stays
(a never-sent call whose lease expired is over-counted, never under-counted).
Corrections are remembered for :data:`CHARGED_KEEP_S` and at most
:data:`CHARGED_MAX` ids; past that, the ceiling charge stands.

Invariant (with actual <= ceiling): ``settled + held <= limit`` whenever every hold
was admitted by :func:`fits`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from comptroller.domain.defenses.verdict import JsonScalar

__all__ = ["CHARGED_KEEP_S", "CHARGED_MAX", "HeldCount", "age", "fits", "release", "reserve", "settle"]

CHARGED_KEEP_S = 7 * 86_400.0
"""How long an expired hold's ceiling charge waits for its correction, seconds."""
CHARGED_MAX = 1_024
"""The most charged ids a row remembers (the oldest are forgotten first; their charge stands)."""

_Entry = tuple[str, int, float]  # (call id, amount, UTC epoch seconds: expiry of a hold, time of a charge)


@dataclass(frozen=True, slots=True)
class HeldCount:
    """One counter as a store keeps it (units are the caller's: tokens, messages, millicents).

    Attributes:
        settled: the amount charged so far (settles, and expired holds at their ceiling).
        holds: ``(call id, amount, lease expiry epoch s)`` of each call in flight.
        charged: ``(call id, amount, charged at epoch s)`` of expired holds awaiting correction.
        version: the row's compare-and-set token (0: not stored yet).
    """

    settled: int = 0
    holds: tuple[_Entry, ...] = ()
    charged: tuple[_Entry, ...] = ()
    version: int = 0

    @property
    def held(self) -> int:
        """The amount held by calls in flight."""
        return sum(amount for _, amount, _ in self.holds)

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record (the entries as JSON text)."""
        return {"settled": self.settled, "holds": json.dumps([list(e) for e in self.holds]),
                "charged": json.dumps([list(e) for e in self.charged])}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar], version: int) -> HeldCount:
        """Read :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        settled = record.get("settled")
        if type(settled) is not int:
            raise ValueError(f"state record field 'settled' must be an integer, got {settled!r:.100}")
        return cls(settled, _entries(record, "holds"), _entries(record, "charged"), version)


def _entries(record: Mapping[str, JsonScalar], key: str) -> tuple[_Entry, ...]:
    text = record.get(key)
    if not isinstance(text, str):
        raise ValueError(f"state record field {key!r} must be JSON text, got {text!r:.100}")
    raw = json.loads(text)
    try:
        return tuple((str(c), int(a), float(t)) for c, a, t in raw)
    except (TypeError, ValueError):
        raise ValueError(f"state record field {key!r} must be [id, amount, time] rows, got {raw!r:.200}") from None


def _ts(at: datetime) -> float:
    return at.astimezone(UTC).timestamp()


def age(count: HeldCount, now: datetime) -> HeldCount:
    """Charge every hold whose lease expired by ``now`` and forget corrections older than the keep."""
    t = _ts(now)
    expired = [e for e in count.holds if e[2] <= t]
    keep_after = t - CHARGED_KEEP_S
    old = [e for e in count.charged if e[2] <= keep_after]
    if not expired and not old and len(count.charged) <= CHARGED_MAX:
        return count
    charged = [e for e in count.charged if e[2] > keep_after] + [(c, a, t) for c, a, _ in expired]
    return replace(count, settled=count.settled + sum(a for _, a, _ in expired),
                   holds=tuple(e for e in count.holds if e[2] > t), charged=tuple(charged[-CHARGED_MAX:]),
                   version=count.version + 1)


def fits(count: HeldCount, amount: int, limit: int) -> bool:
    """True when ``amount`` more can be held: ``settled + held + amount <= limit``."""
    return count.settled + count.held + amount <= limit


def reserve(count: HeldCount, call_id: str, amount: int, expires_at: datetime) -> HeldCount:
    """Hold ``amount`` for ``call_id`` until ``expires_at`` (a call already held changes nothing)."""
    if any(c == call_id for c, _, _ in count.holds):
        return count
    return replace(count, holds=(*count.holds, (call_id, amount, _ts(expires_at))), version=count.version + 1)


def settle(count: HeldCount, call_id: str, actual: int) -> HeldCount:
    """Charge ``actual`` for ``call_id``: its hold returns (or its expiry charge is corrected)."""
    holds = tuple(e for e in count.holds if e[0] != call_id)
    charged = tuple(e for e in count.charged if e[0] != call_id)
    correction = sum(a for c, a, _ in count.charged if c == call_id)
    return replace(count, settled=count.settled + actual - correction, holds=holds, charged=charged,
                   version=count.version + 1)


def release(count: HeldCount, call_id: str) -> HeldCount:
    """Return ``call_id``'s hold (or take back its expiry charge); nothing to return changes nothing."""
    return settle(count, call_id, 0) if any(c == call_id for c, _, _ in count.holds + count.charged) else count
