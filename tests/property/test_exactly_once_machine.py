"""Stateful test of exactly-once money (DESIGN.md rule 12) against a reference model, on every backend.

Hypothesis interleaves, in virtual time: reserve (a sent call, as the gateway makes it),
send (the upstream serves the call: the provider bills its real cost), fail (the call
never left: the holder releases), renew, settle (through :meth:`Engine.deliver`, or into
the durable :class:`~comptroller.storage.outbox.Outbox` while the ledger is down),
outbox delivery (:meth:`Outbox.drain`), ledger outage and recovery, a crash of the
holder (its in-memory calls are orphaned, the outbox file is reopened), time jumps and
sweeps. The model keeps each call's truth (served or not, its real cost, whether its
outcome survived in the holder or the outbox) and the ledger's expected state for it.

Checked after every step: ``settled + reserved <= limit`` on every account, no call with
two usage rows, and every code (reserve, renew, settle, release, delivery). After every
reserve, settle, release, delivery and sweep (each resolves every due lease first, on
every backend): each account's money and each call's charge equal the model's. The
audit rule recovers the ledger, drains the outbox, lets every lease run out and sweeps:
then every served call is charged exactly once, at its real cost when its outcome
survived, else at its ceiling (``unknown_outcome``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, precondition, rule

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.ledger import ReserveRequest, SettleOutcome
from comptroller.domain.pricing import ModelPrice
from comptroller.domain.reconcile import reconcile
from comptroller.domain.scopes import Level, scope_key
from comptroller.engine import Engine
from comptroller.errors import LedgerUnavailableError
from comptroller.ports import LedgerStore
from comptroller.storage.outbox import Outbox
from ledger_kit import BACKENDS, USAGE, attribution

START = datetime(2024, 3, 9, 16, 0, tzinfo=UTC)
NS = "ns"
BUDGETS = (Budget(Level.NAMESPACE, scope_key(NS), 4_000), Budget(Level.AGENT, ANY_SCOPE, 2_500))
BUDGET_BY_ID = {b.id: b for b in BUDGETS}
AGENTS = ("a1", "a2")

AccountKey = tuple[str, str]


class _NoPrices:
    """The engine here only delivers outcomes whose cost is given; it never prices."""

    def resolve(self, model: str) -> str:
        raise AssertionError(f"unexpected price lookup of {model}")

    def price(self, model: str, at: datetime) -> ModelPrice:
        raise AssertionError(f"unexpected price lookup of {model} at {at}")


@dataclass
class Call:
    """The model of one admitted call.

    ``truth``: ``waiting`` (not sent yet), ``served`` (the provider billed ``cost_mc``) or
    ``failed`` (never left: nothing billed). ``holder``: the outcome lives in the holder's
    memory (``live``), in the outbox (``outbox``), reached the ledger (``ledger``), or was
    lost with a crash (``lost``). ``ledger``: the ledger's state as the model predicts it.
    """

    rid: str
    agent: str
    ceiling_mc: int
    ttl_s: float
    expires_at: datetime
    truth: str = "waiting"
    cost_mc: int = 0
    holder: str = "live"
    ledger: str = "pending"
    charged_mc: int = 0

    def accounts(self) -> list[AccountKey]:
        return [(BUDGETS[0].id, scope_key(NS)), (BUDGETS[1].id, scope_key(NS, "t1", self.agent))]


class ExactlyOnceMachine(RuleBasedStateMachine):
    """One store, one outbox, one holder; checked against the model."""

    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="exactly-once-"))
        self.store: LedgerStore = BACKENDS[self.backend](self.tmp)
        for budget in BUDGETS:
            self.store.put_budget(budget)
        self.clock = VirtualClock(START)
        self.engine = Engine(store=self.store, prices=_NoPrices(), clock=self.clock)
        self.outbox = Outbox(self.tmp / "outbox.db")
        self.calls: dict[str, Call] = {}
        self.down = False
        self.unknown_events = 0
        self.counter = 0

    def teardown(self) -> None:
        self.outbox.close()
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def now(self) -> datetime:
        return self.clock.now()

    # the model's ledger --------------------------------------------------------------------

    def model_sweep(self) -> None:
        """Resolve the model's due leases as the ledger does before any decision."""
        for call in self.calls.values():
            if call.ledger == "pending" and call.expires_at <= self.now:
                call.ledger, call.charged_mc = "unknown", call.ceiling_mc
                self.unknown_events += 1

    def settled(self, key: AccountKey) -> int:
        return sum(c.charged_mc for c in self.calls.values() if key in c.accounts())

    def reserved(self, key: AccountKey) -> int:
        return sum(c.ceiling_mc for c in self.calls.values() if c.ledger == "pending" and key in c.accounts())

    def model_deliver(self, call: Call) -> Code:
        """The ledger takes a call's outcome: the code the model predicts."""
        self.model_sweep()
        if call.ledger in ("settled", "released"):
            return Code.ALREADY_SETTLED if call.ledger == "settled" else Code.ALREADY_RELEASED
        late = call.ledger == "unknown"
        if call.truth == "served":
            call.ledger, call.charged_mc = "settled", call.cost_mc
            return Code.SETTLED_LATE if late else Code.SETTLED
        call.ledger = "settled" if late else "released"  # a late release leaves a zero row
        call.charged_mc = 0
        return Code.RELEASED

    def outcome(self, call: Call) -> SettleOutcome:
        if call.truth == "served":
            return SettleOutcome(call.rid, self.now, USAGE, call.cost_mc)
        return SettleOutcome(call.rid, self.now)

    def resolve(self, call: Call) -> None:
        """The holder hands the call's outcome to the ledger, or to the outbox while the ledger is down."""
        if self.down:
            assert self.outbox.put(self.outcome(call))
            call.holder = "outbox"
            return
        expected = self.model_deliver(call)
        assert self.engine.deliver(self.outcome(call)) is expected
        call.holder = "ledger"
        self.check_money()  # a settle or release resolves every due lease first, on every backend

    # rules ---------------------------------------------------------------------------------

    calls_bundle = Bundle("calls")

    @rule(target=calls_bundle, agent=st.sampled_from(AGENTS), ceiling_mc=st.integers(0, 1_200),
          ttl_s=st.sampled_from([10.0, 30.0]))
    def reserve(self, agent: str, ceiling_mc: int, ttl_s: float) -> object:
        """A sent reservation: admitted iff every account has room, as the model predicts."""
        if self.down:
            return multiple()  # admission fails closed while the ledger is down
        self.counter += 1
        request = ReserveRequest(f"k{self.counter}", attribution(agent, namespace=NS), "m", ceiling_mc, 1_000, 100,
                                 ttl_s=ttl_s, sends=True)
        self.model_sweep()
        probe = Call("", agent, ceiling_mc, ttl_s, self.now)
        room = all(self.settled(k) + self.reserved(k) + ceiling_mc <= BUDGET_BY_ID[k[0]].limit_mc
                   for k in probe.accounts())
        result = self.store.reserve(request, self.now)
        assert result.code is (Code.OK if room else Code.BUDGET_EXCEEDED), (result.code, room)
        if result.reservation is None:
            return multiple()
        call = Call(result.reservation.id, agent, ceiling_mc, ttl_s, result.reservation.expires_at)
        self.calls[call.rid] = call
        self.check_money()  # a reserve resolves every due lease first, on every backend
        return call.rid

    @rule(rid=calls_bundle, cost_share=st.integers(0, 100))
    def send(self, rid: str, cost_share: int) -> None:
        """The upstream serves the call: the provider bills a real cost within the ceiling."""
        call = self.calls[rid]
        if call.truth == "waiting" and call.holder == "live":
            call.truth, call.cost_mc = "served", call.ceiling_mc * cost_share // 100

    @rule(rid=calls_bundle)
    def fail_before_sending(self, rid: str) -> None:
        """The call never left (an upstream connect error): the holder releases it."""
        call = self.calls[rid]
        if call.truth == "waiting" and call.holder == "live":
            call.truth = "failed"
            self.resolve(call)

    @rule(rid=calls_bundle)
    def settle(self, rid: str) -> None:
        """A served call ends: its outcome goes to the ledger, or to the outbox while it is down."""
        call = self.calls[rid]
        if call.truth == "served" and call.holder == "live":
            self.resolve(call)

    @rule(rid=calls_bundle, serve=st.booleans(), cost_share=st.integers(0, 100))
    def outcome_after_the_lease(self, rid: str, serve: bool, cost_share: int) -> None:
        """A call outlives its lease (its holder stalled), then ends: served (a settle) or not (a release)."""
        call = self.calls[rid]
        if call.holder != "live" or call.truth == "failed":
            return
        if call.truth == "waiting":
            call.truth, call.cost_mc = ("served", call.ceiling_mc * cost_share // 100) if serve else ("failed", 0)
        if call.expires_at >= self.now:
            self.clock.advance((call.expires_at - self.now).total_seconds() + 1)
        self.resolve(call)

    @rule(rid=calls_bundle)
    def renew(self, rid: str) -> None:
        """The holder renews a call in flight; the ledger answers True iff the lease is pending and alive."""
        call = self.calls[rid]
        if call.holder != "live" or self.down:
            return
        self.model_sweep()
        alive = call.ledger == "pending"
        assert self.store.renew(rid, self.now, call.ttl_s) is alive
        if alive:
            call.expires_at = max(call.expires_at, self.now + timedelta(seconds=call.ttl_s))

    @rule()
    def deliver(self) -> None:
        """The deliverer hands the outbox to the ledger; nothing is delivered while the ledger is down."""
        waiting = [c for c in self.calls.values() if c.holder == "outbox"]

        def deliver(outcome: SettleOutcome) -> Code:
            if self.down:
                raise LedgerUnavailableError("the ledger is down (injected)")
            call = self.calls[outcome.reservation_id]
            expected = self.model_deliver(call)
            assert self.engine.deliver(outcome) is expected
            call.holder = "ledger"
            return expected

        delivered, left = self.outbox.drain(deliver, self.clock.now)
        assert delivered == (0 if self.down else len(waiting))
        assert left == (len(waiting) if self.down else 0)
        if delivered:
            self.check_money()

    @rule(down=st.booleans())
    def outage(self, down: bool) -> None:
        """The ledger goes down or comes back (settles go to the outbox meanwhile)."""
        self.down = down

    @rule()
    def crash(self) -> None:
        """The holder dies: outcomes in its memory are lost; the outbox file survives its restart."""
        for call in self.calls.values():
            if call.holder == "live":
                call.holder = "lost"
        self.outbox.close()
        self.outbox = Outbox(self.tmp / "outbox.db")

    @rule(seconds=st.sampled_from([1.0, 5.0, 12.0, 31.0]))
    def advance(self, seconds: float) -> None:
        """Virtual time moves on."""
        self.clock.advance(seconds)

    @precondition(lambda self: not self.down)
    @rule()
    def sweep(self) -> None:
        """A sweep resolves due leases; then every account and every call's charge equal the model's."""
        self.store.expire(self.now)
        self.model_sweep()
        self.check_money()

    @precondition(lambda self: not self.down)
    @rule()
    def audit(self) -> None:
        """Recover: drain the outbox, let every lease run out, sweep; every served call is charged exactly once."""
        self.deliver()
        latest = max((c.expires_at for c in self.calls.values()), default=self.now)
        if latest > self.now:
            self.clock.advance((latest - self.now).total_seconds())
        self.sweep()
        for call in self.calls.values():
            if call.truth == "served":  # its outcome reached the ledger: its cost; else its ceiling
                assert call.charged_mc == (call.cost_mc if call.holder == "ledger" else call.ceiling_mc), call
        assert reconcile(self.store.ledger_snapshot()) == []

    # checks --------------------------------------------------------------------------------

    def check_money(self) -> None:
        rows = {r.reservation_id: r for r in self.store.usage_records()}
        for call in self.calls.values():
            if call.ledger in ("settled", "unknown"):
                assert rows[call.rid].cost_mc == call.charged_mc, (call, rows[call.rid])
            else:
                assert call.rid not in rows, call
        by_key = {(a.budget.id, a.scope): a for a in self.store.accounts()}
        for key, account in by_key.items():
            assert (account.settled_mc, account.reserved_mc) == (self.settled(key), self.reserved(key)), key
        assert len(self.store.events("unknown_outcome")) == self.unknown_events

    @invariant()
    def within_limits_and_charged_at_most_once(self) -> None:
        """settled + reserved <= limit everywhere; no reservation has two usage rows."""
        for account in self.store.accounts():
            assert account.settled_mc + account.reserved_mc <= account.budget.limit_mc, account
            assert account.reserved_mc >= 0 and account.settled_mc >= 0, account
        rows = Counter(r.reservation_id for r in self.store.usage_records())
        assert all(n == 1 for n in rows.values()), rows


def _machine(backend: str) -> type[ExactlyOnceMachine]:
    return type(f"ExactlyOnce{backend.title()}", (ExactlyOnceMachine,), {"backend": backend})


_EXAMPLES = {"memory": 2.0, "sqlite": 0.5, "postgres": 0.5}
"""Share of the profile's examples per backend: the model-checked memory store runs most (it is fast)."""

for _backend in sorted(BACKENDS):
    _case = _machine(_backend).TestCase
    _case.settings = settings(max_examples=max(10, int(settings.default.max_examples * _EXAMPLES.get(_backend, 0.5))),
                              stateful_step_count=min(settings.default.stateful_step_count, 30))
    globals()[f"TestExactlyOnce{_backend.title()}"] = _case
del _backend, _case  # pytest collects any TestCase left in the module, whatever its name
