"""Stateful property test of the escrow shards (comptroller.domain.escrow) against one plain account.

Hypothesis interleaves reserves (random ceilings, keys spreading them over the shards),
settles (within the ceiling, and ceiling misses), releases, expiries (several holds at
once, a sent one charged its ceiling), spontaneous rebalances and limit changes. The
reference is one unsharded account: admit iff settled + reserved + ceiling <= limit.
The sharded account must give the same answer every time, hold the same totals, and
keep the invariant at every step: the caps sum to at most the limit, and while nothing
pushed spend past the limit from outside (a ceiling miss, a lowered limit) every shard
is within its cap, so settled + reserved <= limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from comptroller.domain.escrow import Shard, free_mc, hold, rebalance, resolve, shard_order, totals


@dataclass
class _Hold:
    """A pending reservation in both models."""

    ceiling_mc: int
    shard: int


class EscrowMachine(RuleBasedStateMachine):
    """The sharded account and the reference account, step by step."""

    @initialize(n=st.integers(1, 8), limit_mc=st.integers(0, 5_000))
    def start(self, n: int, limit_mc: int) -> None:
        """A fresh account: no caps until the first rebalance (every shard dry)."""
        self.limit_mc = limit_mc
        self.shards: tuple[Shard, ...] = tuple(Shard(0) for _ in range(n))
        self.holds: dict[int, _Hold] = {}
        self.next_id = 0
        self.settled_mc = 0  # the reference account
        self.reserved_mc = 0
        self.pushed = False  # a ceiling miss or a lowered limit put spend past a cap from outside

    @rule(ceiling_mc=st.integers(0, 1_500), key=st.text(max_size=6))
    def reserve(self, ceiling_mc: int, key: str) -> None:
        """A reserve is admitted by the shards exactly when the reference account admits it."""
        expected = self.settled_mc + self.reserved_mc + ceiling_mc <= self.limit_mc
        # the store first decides on the account's totals (a snapshot), then holds on a shard
        settled, reserved = totals(self.shards)
        done = hold(self.limit_mc, self.shards, shard_order(key, len(self.shards)), ceiling_mc) \
            if settled + reserved + ceiling_mc <= self.limit_mc else None
        assert (done is not None) == expected
        if done is None:
            return
        self.shards, index, rebalanced = done
        event("rebalanced on reserve" if rebalanced else "taken from a shard")
        self.holds[self.next_id] = _Hold(ceiling_mc, index)
        self.next_id += 1
        self.reserved_mc += ceiling_mc

    def _pop(self, pick: int) -> _Hold:
        return self.holds.pop(sorted(self.holds)[pick % len(self.holds)])

    @precondition(lambda self: self.holds)
    @rule(pick=st.integers(0, 100), fraction=st.sampled_from([0, 0.5, 1, 1.5, 3]))
    def settle(self, pick: int, fraction: float) -> None:
        """A settle charges the cost on the hold's shard and returns the rest there; a miss rebalances."""
        h = self._pop(pick)
        cost_mc = int(h.ceiling_mc * fraction)
        self.shards = resolve(self.shards, h.shard, h.ceiling_mc, cost_mc)
        self.reserved_mc -= h.ceiling_mc
        self.settled_mc += cost_mc
        if cost_mc > h.ceiling_mc:  # the store rebalances at once, so no other shard keeps room for it
            self.pushed = True
            self.shards = rebalance(self.limit_mc, self.shards) or self.shards

    @precondition(lambda self: self.holds)
    @rule(pick=st.integers(0, 100))
    def release(self, pick: int) -> None:
        """A release returns the whole hold to its shard."""
        h = self._pop(pick)
        self.shards = resolve(self.shards, h.shard, h.ceiling_mc, 0)
        self.reserved_mc -= h.ceiling_mc

    @precondition(lambda self: self.holds)
    @rule(count=st.integers(1, 4), sent=st.booleans())
    def expire(self, count: int, sent: bool) -> None:
        """An expiry sweep resolves several holds at once; a sent call's is charged its ceiling."""
        for _ in range(min(count, len(self.holds))):
            h = self._pop(0)
            charged = h.ceiling_mc if sent else 0
            self.shards = resolve(self.shards, h.shard, h.ceiling_mc, charged)
            self.reserved_mc -= h.ceiling_mc
            self.settled_mc += charged

    @rule(preferred=st.integers(0, 255))
    def rebalance_now(self, preferred: int) -> None:
        """A rebalance at any moment moves room between shards, never money."""
        before = [(s.settled_mc, s.reserved_mc) for s in self.shards]
        planned = rebalance(self.limit_mc, self.shards, preferred=preferred % len(self.shards))
        assert planned is not None  # a need of 0 always fits
        assert [(s.settled_mc, s.reserved_mc) for s in planned] == before
        self.shards = planned

    @rule(limit_mc=st.integers(0, 5_000))
    def change_limit(self, limit_mc: int) -> None:
        """A new limit is applied by a rebalance (the store runs one when a shard's limit is stale)."""
        self.pushed = self.pushed or limit_mc < self.limit_mc
        self.limit_mc = limit_mc
        self.shards = rebalance(limit_mc, self.shards) or self.shards

    @invariant()
    def totals_match_the_reference(self) -> None:
        """The shards hold exactly the reference account's money."""
        assert totals(self.shards) == (self.settled_mc, self.reserved_mc)
        assert self.reserved_mc == sum(h.ceiling_mc for h in self.holds.values())

    @invariant()
    def never_past_the_limit(self) -> None:
        """Caps never sum past the limit; unless pushed from outside, every shard is within its cap."""
        used = self.settled_mc + self.reserved_mc
        assert sum(s.cap_mc for s in self.shards) <= self.limit_mc
        assert all(s.reserved_mc >= 0 for s in self.shards)
        if not self.pushed:
            assert all(s.room_mc >= 0 for s in self.shards)
            assert used <= self.limit_mc
        assert free_mc(self.limit_mc, self.shards) == self.limit_mc - used


TestEscrowMachine = EscrowMachine.TestCase
