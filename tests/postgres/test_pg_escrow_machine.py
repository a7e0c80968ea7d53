"""Stateful property test of the escrow shards on PostgreSQL against a reference model of plain accounts.

Hypothesis interleaves reserves on two tenants (sent or not), settles (within the
ceiling and ceiling misses), releases, expiry sweeps (a sent lease is charged its
ceiling), explicit rebalances and namespace limit changes, on a PostgreSQL store whose
namespace and tenant accounts are split into 4 shards. The model is one plain account
per budget: admit iff settled + reserved + ceiling <= limit on both. After every step:
the store's totals equal the model's; the caps of every sharded account sum to at most
the limit they were split from; and unless a ceiling miss or a lowered limit pushed
spend from outside, settled + reserved <= limit and every shard is within its cap.
Skipped with the reason when PostgreSQL is unreachable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.scopes import Level, scope_key
from comptroller.storage.postgres import PostgresStore
from ledger_kit import T0, USAGE, attribution, reserve_request
from postgres.pg_kit import PG_URL, admin, new_schema

NS_SCOPE = scope_key("ns")
TENANT_LIMIT_MC = 3_000
TTL_S = 600.0
_SHARDS = """SELECT a.id, a.scope, a.shard_limit_mc, coalesce(sum(s.cap_mc), 0),
                    coalesce(bool_and(s.settled_mc + s.reserved_mc <= s.cap_mc), true)
             FROM accounts a JOIN account_shards s ON s.account_id = a.id GROUP BY a.id"""


@dataclass
class _Hold:
    """A pending reservation as the model sees it."""

    ceiling_mc: int
    tenant_scope: str
    sent: bool


class PostgresEscrowMachine(RuleBasedStateMachine):
    """A sharded PostgreSQL ledger and plain reference accounts, step by step."""

    def __init__(self) -> None:
        super().__init__()
        self.schema = new_schema()
        self.store = PostgresStore(PG_URL, schema=self.schema, max_size=2, escrow_shards=4)
        self.limits = {NS_SCOPE: 5_000}
        self.store.put_budget(Budget(Level.NAMESPACE, NS_SCOPE, 5_000))
        self.store.put_budget(Budget(Level.TENANT, ANY_SCOPE, TENANT_LIMIT_MC))
        self.now = T0
        self.counter = 0
        self.holds: dict[str, _Hold] = {}
        self.settled: dict[str, int] = {}
        self.pushed = False  # a ceiling miss or a lowered limit put spend past a cap from outside

    def teardown(self) -> None:
        self.store.close()

    def _limit(self, scope: str) -> int:
        return self.limits.get(scope, TENANT_LIMIT_MC)

    def _reserved(self, scope: str) -> int:
        return sum(h.ceiling_mc for h in self.holds.values() if scope in (NS_SCOPE, h.tenant_scope))

    def _charge(self, hold: _Hold, cost_mc: int) -> None:
        for scope in (NS_SCOPE, hold.tenant_scope):
            self.settled[scope] = self.settled.get(scope, 0) + cost_mc

    @rule(tenant=st.sampled_from(["t1", "t2"]), ceiling_mc=st.integers(0, 1_600), sent=st.booleans())
    def reserve(self, tenant: str, ceiling_mc: int, sent: bool) -> None:
        """A reserve is admitted exactly when both plain accounts have room for the ceiling."""
        who = attribution("a1", tenant=tenant)
        tenant_scope = dict(who.scopes())[Level.TENANT]
        fits = all(self.settled.get(s, 0) + self._reserved(s) + ceiling_mc <= self._limit(s)
                   for s in (NS_SCOPE, tenant_scope))
        self.counter += 1
        request = replace(reserve_request(f"k{self.counter}", ceiling_mc, who=who, ttl_s=TTL_S), sends=sent)
        result = self.store.reserve(request, self.now)
        assert result.admitted == fits, (result.code, fits)
        if result.reservation is not None:
            self.holds[result.reservation.id] = _Hold(ceiling_mc, tenant_scope, sent)

    def _pick(self, pick: int) -> tuple[str, _Hold]:
        rid = sorted(self.holds)[pick % len(self.holds)]
        return rid, self.holds.pop(rid)

    @precondition(lambda self: self.holds)
    @rule(pick=st.integers(0, 50), pct=st.sampled_from([0, 40, 100, 150, 400]))
    def settle(self, pick: int, pct: int) -> None:
        """A settle charges its cost where the hold was and returns the rest (a miss charges past it)."""
        rid, hold = self._pick(pick)
        cost_mc = hold.ceiling_mc * pct // 100
        assert self.store.settle(rid, USAGE, cost_mc, self.now).code is Code.SETTLED
        self._charge(hold, cost_mc)
        self.pushed = self.pushed or cost_mc > hold.ceiling_mc

    @precondition(lambda self: self.holds)
    @rule(pick=st.integers(0, 50))
    def release(self, pick: int) -> None:
        """A release returns the whole hold to the shard it came from."""
        rid, _ = self._pick(pick)
        assert self.store.release(rid, self.now).code is Code.RELEASED

    @rule()
    def expire_all(self) -> None:
        """Past every lease, the sweep returns unsent holds and charges sent ones their ceiling."""
        self.now += timedelta(seconds=TTL_S + 1)
        assert self.store.expire(self.now) == len(self.holds)
        for hold in self.holds.values():
            if hold.sent:
                self._charge(hold, hold.ceiling_mc)
        self.holds.clear()

    @rule()
    def rebalance(self) -> None:
        """An explicit rebalance moves room between shards, never money."""
        self.store.rebalance_escrow()

    @rule(limit_mc=st.integers(0, 8_000))
    def change_namespace_limit(self, limit_mc: int) -> None:
        """A new namespace limit applies from the next reserve on (it rebalances the stale caps)."""
        used = self.settled.get(NS_SCOPE, 0) + self._reserved(NS_SCOPE)
        self.pushed = self.pushed or limit_mc < used
        self.limits[NS_SCOPE] = limit_mc
        self.store.put_budget(Budget(Level.NAMESPACE, NS_SCOPE, limit_mc))

    @invariant()
    def totals_match_the_model(self) -> None:
        """Every account holds exactly the model's settled and reserved money."""
        seen = {a.scope: (a.settled_mc, a.reserved_mc) for a in self.store.accounts()}
        expected = {s: (self.settled.get(s, 0), self._reserved(s)) for s in seen}
        assert seen == expected
        for scope, (settled, reserved) in seen.items():
            assert reserved >= 0
            if not self.pushed:
                assert settled + reserved <= self._limit(scope)

    @invariant()
    def shards_stay_within_their_caps(self) -> None:
        """Caps sum to at most the limit they were split from; unpushed, every shard is within its cap."""
        with admin() as conn:
            conn.execute(f"SET search_path TO {self.schema}")
            for _, scope, split_from, caps, within in conn.execute(_SHARDS).fetchall():
                assert caps <= (split_from or 0), scope
                if not self.pushed:
                    assert within, scope


TestPostgresEscrowMachine = PostgresEscrowMachine.TestCase
TestPostgresEscrowMachine.settings = settings(TestPostgresEscrowMachine.settings, max_examples=25)
