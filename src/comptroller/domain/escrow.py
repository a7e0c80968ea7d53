"""Escrow shards: a hot budget account's headroom split so that reserves need no one hot row.

The escrow transactional method (O'Neil, "The Escrow Transactional Method", ACM TODS
11(4), 1986) and the demarcation protocol (Barbará and Garcia-Molina, 1992): an
account every call touches (a namespace's, a tenant's) is split into ``N`` shards.
Each shard owns a part of the limit, its ``cap_mc``, and holds its own
``settled_mc`` and ``reserved_mc``. A reserve takes its ceiling from one shard with
room (:func:`shard_order`, :func:`take`), so concurrent reserves on one account lock
different rows; a settle, release or expiry returns the money to the shard it came
from. When no shard has room for a ceiling, a rebalance (:func:`rebalance`), run
while holding every shard of the account, recomputes every cap from the account's
limit: the headroom left (limit - settled - reserved over all shards) is split
evenly, with the shard the caller prefers given the ceiling first.

Invariant (DESIGN.md rule 2). The caps never sum past the limit, and after a
rebalance that found room every shard is within its cap; a shard admits only within
its cap, a settle within the ceiling or a release only lowers its spend, so at every
moment

    sum(settled + reserved over the shards) <= sum(cap) <= limit.

Two things can push spend past the limit from outside a shard's check: a ceiling miss
(a call that cost more than it held) and a limit lowered below what is already
spent or held. Both are followed by a rebalance (the store runs it in the same
transaction as the miss, or in the next reserve that sees the new limit); when it
finds no headroom it sets every cap to 0, so no shard admits anything until a
rebalance under the account's lock finds room again. A shard's cap is only a bound
for admission; its money (settled, reserved) never moves between shards.

Everything here is pure arithmetic on integers (millicents): no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SHARDS_MAX", "Shard", "free_mc", "hold", "rebalance", "resolve", "shard_order", "take", "totals"]

SHARDS_MAX = 256
"""The most shards one account may have (a rebalance locks them all)."""


@dataclass(frozen=True, slots=True)
class Shard:
    """One escrow shard of an account.

    Attributes:
        cap_mc: the part of the account's limit this shard owns, millicents (>= 0).
        settled_mc: spend charged through this shard, millicents.
        reserved_mc: held by pending reservations taken from this shard, millicents (>= 0).
    """

    cap_mc: int
    settled_mc: int = 0
    reserved_mc: int = 0

    @property
    def room_mc(self) -> int:
        """What the shard can still hold: cap - settled - reserved (negative after a ceiling miss)."""
        return self.cap_mc - self.settled_mc - self.reserved_mc


def shard_order(key: str, n: int) -> list[int]:
    """The order in which a reservation tries the ``n`` shards: from a start fixed by ``key``, cyclically.

    The start is a stable hash (BLAKE2b) of ``key`` (the idempotency key or reservation
    id), so concurrent reserves spread over the shards and a retry tries the same ones.

    Raises:
        ValueError: unless ``1 <= n <= SHARDS_MAX``.
    """
    if not 1 <= n <= SHARDS_MAX:
        raise ValueError(f"an account has 1..{SHARDS_MAX} shards, got {n}")
    start = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") % n
    return [(start + i) % n for i in range(n)]


def take(shards: Sequence[Shard], order: Sequence[int], amount_mc: int) -> int | None:
    """The first shard in ``order`` whose room holds ``amount_mc``, or None when every one is dry."""
    for index in order:
        if shards[index].room_mc >= amount_mc:
            return index
    return None


def totals(shards: Sequence[Shard]) -> tuple[int, int]:
    """``(settled_mc, reserved_mc)`` of the whole account: the sums over its shards."""
    return sum(s.settled_mc for s in shards), sum(s.reserved_mc for s in shards)


def free_mc(limit_mc: int, shards: Sequence[Shard]) -> int:
    """The account's headroom: limit - settled - reserved over every shard (negative after a ceiling miss)."""
    settled, reserved = totals(shards)
    return limit_mc - settled - reserved


def rebalance(limit_mc: int, shards: Sequence[Shard], *, need_mc: int = 0, preferred: int = 0
              ) -> tuple[Shard, ...] | None:
    """New caps for every shard from the account's limit, or None when the account cannot hold ``need_mc``.

    The headroom (``free_mc``) goes first ``need_mc`` to shard ``preferred`` (so the
    caller that found every shard dry can take its ceiling there), then the rest
    evenly, the remainder of the division one millicent each to the first shards. Each
    cap is the shard's own settled + reserved plus its share. With spend past the limit
    every cap is 0: the account is frozen until a rebalance finds room.

    Args:
        limit_mc: the account's current limit, millicents (>= 0).
        shards: the shards as read while holding all of them.
        need_mc: a ceiling that must fit in ``preferred`` after the rebalance, millicents (>= 0).
        preferred: the index of the shard that gets ``need_mc``.

    Returns:
        The shards with new caps (same order and money), whose caps sum to at most
        ``limit_mc``; None if ``need_mc`` exceeds the headroom.

    Raises:
        ValueError: on no shards, a negative limit or need, or ``preferred`` out of range.
    """
    if not shards or limit_mc < 0 or need_mc < 0 or not 0 <= preferred < len(shards):
        raise ValueError(f"rebalance needs shards, limit_mc >= 0, need_mc >= 0 and a shard index; got "
                         f"{len(shards)} shards, limit_mc={limit_mc}, need_mc={need_mc}, preferred={preferred}")
    headroom = free_mc(limit_mc, shards)
    if need_mc > max(0, headroom):
        return None
    if headroom < 0:  # spend is past the limit (a need of 0 still fits): freeze every shard
        return tuple(Shard(0, s.settled_mc, s.reserved_mc) for s in shards)
    share, extra = divmod(headroom - need_mc, len(shards))
    caps = []
    for index, shard in enumerate(shards):
        used = shard.settled_mc + shard.reserved_mc
        grant = share + (1 if index < extra else 0) + (need_mc if index == preferred else 0)
        caps.append(Shard(used + grant, shard.settled_mc, shard.reserved_mc))
    return tuple(caps)


def hold(limit_mc: int, shards: Sequence[Shard], order: Sequence[int], amount_mc: int
         ) -> tuple[tuple[Shard, ...], int, bool] | None:
    """Hold ``amount_mc`` on a sharded account: in the first shard of ``order`` with room, else after a rebalance.

    This is the whole reserve of one account, as the PostgreSQL store runs it: the fast
    path takes from a shard with room (:func:`take`); when every shard is dry it holds
    all of them and rebalances (:func:`rebalance`, the ceiling going to ``order[0]``).

    Returns:
        ``(shards after the hold, the shard that holds it, whether a rebalance ran)``,
        or None when the account's headroom cannot hold ``amount_mc`` (a refusal).
    """
    index = take(shards, order, amount_mc)
    rebalanced = index is None
    if index is None:
        planned = rebalance(limit_mc, shards, need_mc=amount_mc, preferred=order[0])
        if planned is None:
            return None
        shards, index = planned, order[0]
    held = shards[index]
    after = Shard(held.cap_mc, held.settled_mc, held.reserved_mc + amount_mc)
    return (*shards[:index], after, *shards[index + 1:]), index, rebalanced


def resolve(shards: Sequence[Shard], index: int, held_mc: int, charged_mc: int) -> tuple[Shard, ...]:
    """Return a hold of ``held_mc`` to shard ``index`` and charge ``charged_mc`` there (a settle: the
    cost; a release or expiry: 0; a sent call's expiry: the ceiling)."""
    s = shards[index]
    after = Shard(s.cap_mc, s.settled_mc + charged_mc, s.reserved_mc - held_mc)
    return (*shards[:index], after, *shards[index + 1:])
