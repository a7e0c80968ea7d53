"""Stateful property test of the ledger against a reference model, on every backend and differentially.

Hypothesis interleaves reserves (random attributions over a few agents, tenants,
conversations and tasks; random ceilings and leases), idempotent retries and
conflicting retries, settles (within the ceiling, or above it: a ceiling miss),
repeated settles, releases, repeated releases, unknown ids, and jumps of virtual time
that expire leases and cross calendar days in three time zones. The model predicts
every answer and keeps, per account:

* ``settled`` (what was charged) and ``overrun`` (money charged without a live hold:
  the excess of ceiling misses and whole late settles);
* the pending, unexpired reservations holding it.

After every step, on every account of every store: ``reserved_mc`` equals the sum of
ceilings of the pending holds, ``settled_mc`` equals the model's,
``settled + reserved <= limit + overrun`` (so ``<= limit`` when nothing missed or
came late), the usage log sums to ``settled_mc``, and each alert threshold reached
has fired exactly once. The differential machine runs memory and SQLite side by side
and also requires equal codes, refusals, accounts, usage logs and events.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar
from zoneinfo import ZoneInfo

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from comptroller.domain.budgets import ANY_SCOPE, Budget, Period
from comptroller.domain.codes import Code
from comptroller.domain.ledger import ReserveRequest, ReserveResult
from comptroller.domain.scopes import LEVELS, Attribution, Level, scope_key
from comptroller.ports import LedgerStore
from ledger_kit import BACKENDS, USAGE

NS = "ns"
BUDGETS = (
    Budget(Level.NAMESPACE, scope_key(NS), 9_000),
    Budget(Level.TENANT, ANY_SCOPE, 6_000),
    Budget(Level.AGENT, ANY_SCOPE, 3_000),
    Budget(Level.AGENT, scope_key(NS, "t1", "a1"), 4_500),
    Budget(Level.AGENT, ANY_SCOPE, 2_500, period=Period.DAY, timezone="America/New_York"),
    Budget(Level.AGENT_CONVERSATION, ANY_SCOPE, 2_000, alert_thresholds_pct=(25, 50, 75, 100, 150)),
    Budget(Level.CONVERSATION, ANY_SCOPE, 3_500, period=Period.DAY, timezone="Asia/Kolkata"),
    Budget(Level.CONVERSATION, scope_key(NS, "c2"), 2_000, period=Period.DAY, timezone="Asia/Kolkata"),
    Budget(Level.TASK, ANY_SCOPE, 2_500, period=Period.WEEK),
)
START = datetime(2024, 3, 9, 16, 0, tzinfo=UTC)
"""Hours before midnight in Kolkata and New York, and the night US daylight saving starts."""
MODEL = "test-model"

AccountKey = tuple[str, str, str]


def _period_key(budget: Budget, at: datetime) -> str:
    """The calendar period of ``at`` on the budget's zone, as the ISO date it starts on."""
    if budget.period is Period.TOTAL:
        return "total"
    day = at.astimezone(ZoneInfo(budget.timezone)).date()
    if budget.period is Period.WEEK:
        return (day - timedelta(days=day.weekday())).isoformat()
    if budget.period is Period.MONTH:
        return day.replace(day=1).isoformat()
    return day.isoformat()


def _applicable(who: Attribution, at: datetime) -> list[AccountKey]:
    """The accounts a call holds: per level and period, the scope's own budget, else the default."""
    keys = []
    for level, scope in who.scopes():
        for period in Period:
            own = [b for b in BUDGETS if (b.level, b.period, b.scope) == (level, period, scope)]
            default = [b for b in BUDGETS if (b.level, b.period, b.scope) == (level, period, ANY_SCOPE)]
            for budget in (own or default)[:1]:
                keys.append((budget.id, scope, _period_key(budget, at)))
    return keys


BUDGET_BY_ID = {b.id: b for b in BUDGETS}


@dataclass
class Hold:
    """The model of one admitted reservation."""

    request: ReserveRequest
    accounts: list[AccountKey]
    expires_at: datetime
    ids: list[str]
    state: str = "pending"
    cost_mc: int | None = None


class LedgerMachine(RuleBasedStateMachine):
    """Drives one or more stores with the same operations and checks them against the model."""

    backends: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ledger-machine-"))
        self.stores: list[LedgerStore] = []
        for name in self.backends:
            (self.tmp / name).mkdir()
            self.stores.append(BACKENDS[name](self.tmp / name))
        for store in self.stores:
            for budget in BUDGETS:
                store.put_budget(budget)
        self.now = START
        self.counter = 0
        self.holds: dict[str, Hold] = {}
        self.by_id: list[dict[str, Hold]] = [{} for _ in self.stores]
        self.settled: Counter[AccountKey] = Counter()
        self.overrun: Counter[AccountKey] = Counter()
        self.touched: set[AccountKey] = set()

    def teardown(self) -> None:
        for store in self.stores:
            store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # the model ------------------------------------------------------------------------------

    def reserved(self, key: AccountKey) -> int:
        return sum(h.request.ceiling_mc for h in self.holds.values() if h.state == "pending" and key in h.accounts)

    def sweep(self) -> int:
        """Expire the model's leases due at ``now``; the number expired."""
        due = [h for h in self.holds.values() if h.state == "pending" and h.expires_at <= self.now]
        for hold in due:
            hold.state = "expired"
        return len(due)

    def same_code(self, codes: list[Code]) -> Code:
        assert len(set(codes)) == 1, f"backends {self.backends} disagree: {codes}"
        event(f"code: {codes[0]}")
        return codes[0]

    # rules ----------------------------------------------------------------------------------

    holds_bundle = Bundle("holds")
    who_args: ClassVar[dict[str, st.SearchStrategy[str | None]]] = {
        "agent": st.sampled_from(["a1", "a2", "a3"]), "tenant": st.sampled_from(["t1", "t2"]),
        "conversation": st.sampled_from([None, "c1", "c2"]), "task": st.sampled_from([None, "j1"]),
    }
    ttl_args = st.sampled_from([30, 60, 600])

    @initialize(target=holds_bundle, **who_args, ceiling_mc=st.integers(0, 1_500), ttl_s=ttl_args)
    def first_reserve(self, *, agent: str, tenant: str, conversation: str | None, task: str | None,
                      ceiling_mc: int, ttl_s: int) -> object:
        who = Attribution(namespace=NS, tenant=tenant, agent=agent, conversation=conversation, task=task)
        return self.hold(who, ceiling_mc, ttl_s)

    @rule(target=holds_bundle, **who_args, ceiling_mc=st.integers(0, 1_500), ttl_s=ttl_args)
    def reserve(self, *, agent: str, tenant: str, conversation: str | None, task: str | None, ceiling_mc: int,
                ttl_s: int) -> object:
        who = Attribution(namespace=NS, tenant=tenant, agent=agent, conversation=conversation, task=task)
        return self.hold(who, ceiling_mc, ttl_s)

    @rule(target=holds_bundle, **who_args, delta_mc=st.sampled_from([-1, 0, 1]), ttl_s=ttl_args)
    def reserve_to_the_limit(self, *, agent: str, tenant: str, conversation: str | None, task: str | None,
                             delta_mc: int, ttl_s: int) -> object:
        """Ask for exactly the least money left on the call's accounts, one millicent less, or one more."""
        who = Attribution(namespace=NS, tenant=tenant, agent=agent, conversation=conversation, task=task)
        self.sweep()
        left = min(BUDGET_BY_ID[k[0]].limit_mc - self.settled[k] - self.reserved(k) for k in _applicable(who, self.now))
        return self.hold(who, max(0, left + delta_mc), ttl_s)

    def hold(self, who: Attribution, ceiling_mc: int, ttl_s: int) -> object:
        """Reserve on every store, check the answers against the model, and remember an admitted hold."""
        self.counter += 1
        request = ReserveRequest(f"k{self.counter}", who, MODEL, ceiling_mc, 1_000, 100, ttl_s=float(ttl_s))
        self.sweep()
        accounts = _applicable(who, self.now)
        self.touched.update(accounts)
        refusing = [k for k in accounts
                    if self.settled[k] + self.reserved(k) + ceiling_mc > BUDGET_BY_ID[k[0]].limit_mc]
        results = [store.reserve(request, self.now) for store in self.stores]
        code = self.same_code([r.code for r in results])
        if refusing:
            assert code is Code.BUDGET_EXCEEDED
            for result in results:
                self.check_refusal(result, refusing, ceiling_mc)
            assert len({r.refusal for r in results}) == 1
            return multiple()
        assert code is Code.OK
        ids = [r.reservation.id for r in results if r.reservation is not None]
        hold = Hold(request, accounts, self.now + timedelta(seconds=ttl_s), ids)
        self.holds[request.idempotency_key] = hold
        for i, rid in enumerate(ids):
            self.by_id[i][rid] = hold
        return request.idempotency_key

    def check_refusal(self, result: ReserveResult, refusing: list[AccountKey], ceiling_mc: int) -> None:
        def remaining(k: AccountKey) -> int:
            return BUDGET_BY_ID[k[0]].limit_mc - self.settled[k] - self.reserved(k)

        worst = min(refusing, key=lambda k: (remaining(k), LEVELS.index(BUDGET_BY_ID[k[0]].level)))
        refusal = result.refusal
        assert refusal is not None and result.reservation is None
        assert (refusal.level, refusal.scope) == (BUDGET_BY_ID[worst[0]].level, worst[1])
        assert (refusal.remaining_mc, refusal.requested_mc) == (remaining(worst), ceiling_mc)
        named = next(k for k in refusing if (k[0], k[1]) == (refusal.budget_id, refusal.scope))
        assert (refusal.limit_mc, refusal.settled_mc, refusal.reserved_mc) == (
            BUDGET_BY_ID[named[0]].limit_mc, self.settled[named], self.reserved(named))

    @rule(key=holds_bundle, same=st.booleans())
    def retry(self, key: str, same: bool) -> None:
        hold = self.holds[key]
        request = hold.request
        if not same:
            request = ReserveRequest(key, request.attribution, MODEL, request.ceiling_mc + 1, 1_000, 100)
        self.sweep()
        results = [store.reserve(request, self.now) for store in self.stores]
        code = self.same_code([r.code for r in results])
        if same:
            assert code is Code.ALREADY_RESERVED
            assert [r.reservation.id for r in results if r.reservation is not None] == hold.ids
            assert {str(r.reservation.state) for r in results if r.reservation is not None} == {hold.state}
        else:
            assert code is Code.IDEMPOTENCY_CONFLICT
            assert all(r.reservation is None for r in results)

    @rule(key=holds_bundle, pct=st.integers(0, 100), excess_mc=st.one_of(st.just(0), st.integers(1, 800)))
    def settle(self, key: str, pct: int, excess_mc: int) -> None:
        hold = self.holds[key]
        ceiling = hold.request.ceiling_mc
        cost = ceiling * pct // 100 + excess_mc
        self.sweep()
        results = [store.settle(rid, USAGE, cost, self.now) for store, rid in zip(self.stores, hold.ids, strict=True)]
        code = self.same_code([r.code for r in results])
        if hold.state == "settled":
            assert code is Code.ALREADY_SETTLED
            assert {r.record.cost_mc for r in results if r.record is not None} == {hold.cost_mc}
            return
        late = hold.state != "pending"
        assert code is (Code.SETTLED_LATE if late else Code.SETTLED)
        event("ceiling miss" if cost > ceiling else "settled within the ceiling")
        for account in hold.accounts:
            self.settled[account] += cost
            self.overrun[account] += cost if late else max(0, cost - ceiling)
        hold.state, hold.cost_mc = "settled", cost

    @rule(key=holds_bundle)
    def release(self, key: str) -> None:
        hold = self.holds[key]
        self.sweep()
        results = [store.release(rid, self.now) for store, rid in zip(self.stores, hold.ids, strict=True)]
        code = self.same_code([r.code for r in results])
        expected = {"pending": Code.RELEASED, "settled": Code.ALREADY_SETTLED}.get(hold.state, Code.ALREADY_RELEASED)
        assert code is expected
        if hold.state == "pending":
            hold.state = "released"

    @rule(settle=st.booleans())
    def unknown_id(self, settle: bool) -> None:
        self.sweep()
        if settle:
            codes = [store.settle("no-such-reservation", USAGE, 1, self.now).code for store in self.stores]
        else:
            codes = [store.release("no-such-reservation", self.now).code for store in self.stores]
        assert self.same_code(codes) is Code.RESERVATION_NOT_FOUND

    @rule(seconds=st.sampled_from([1, 29, 30, 31, 59, 60, 61, 599, 600, 3_600, 5 * 3_600, 86_400]),
          sweep=st.booleans())
    def advance(self, seconds: int, sweep: bool) -> None:
        """Move virtual time; with ``sweep`` expire leases now, else let the next operation find them."""
        self.now += timedelta(seconds=seconds)
        if sweep:
            expired = self.sweep()
            assert [store.expire(self.now) for store in self.stores] == [expired] * len(self.stores)

    # invariants -----------------------------------------------------------------------------

    @invariant()
    def accounts_match_the_model(self) -> None:
        for store in self.stores:
            views = {(a.budget.id, a.scope, a.period_key): a for a in store.accounts()}
            assert self.touched <= set(views)
            for key, account in views.items():
                assert account.reserved_mc == self.reserved(key), key
                assert account.settled_mc == self.settled[key], key
                assert account.settled_mc + account.reserved_mc <= account.budget.limit_mc + self.overrun[key], key
                if self.overrun[key] == 0:
                    assert account.settled_mc + account.reserved_mc <= account.budget.limit_mc, key

    @invariant()
    def usage_log_sums_to_settled(self) -> None:
        for i, store in enumerate(self.stores):
            totals: Counter[AccountKey] = Counter()
            records = list(store.usage_records())
            assert len(records) == len({r.reservation_id for r in records})
            assert len(records) == sum(h.state == "settled" for h in self.holds.values())
            for record in records:
                for key in self.by_id[i][record.reservation_id].accounts:
                    totals[key] += record.cost_mc
            for account in store.accounts():
                assert totals[(account.budget.id, account.scope, account.period_key)] == account.settled_mc

    @invariant()
    def each_reached_threshold_fired_once(self) -> None:
        for store in self.stores:
            fired: dict[tuple[str, str, str], list[int]] = defaultdict(list)
            for alert in store.events("alert"):
                fired[(alert.detail["budget_id"], str(alert.scope), alert.detail["period"])].append(
                    alert.detail["threshold_pct"])
            for account in store.accounts():
                budget = account.budget
                reached = [p for p in budget.alert_thresholds_pct if account.settled_mc * 100 >= p * budget.limit_mc]
                assert fired.pop((budget.id, account.scope, account.period_key), []) == reached
            assert not fired

    @invariant()
    def backends_hold_the_same_ledger(self) -> None:
        if len(self.stores) < 2:
            return
        accounts = [[(a.budget, a.scope, a.period_key, a.settled_mc, a.reserved_mc, a.alert_pct_fired)
                     for a in store.accounts()] for store in self.stores]
        usage = [[(r.idempotency_key, r.attribution, r.model, r.reserved_at, r.resolved_at, r.usage, r.cost_mc,
                   r.ceiling_mc, r.outcome) for r in store.usage_records()] for store in self.stores]
        events = [store.events() for store in self.stores]
        for other in range(1, len(self.stores)):
            assert accounts[other] == accounts[0]
            assert usage[other] == usage[0]
            assert events[other] == events[0]


def _machine(backends: tuple[str, ...]) -> type[LedgerMachine]:
    """A machine class driving ``backends`` side by side."""
    name = "Versus".join(b.title() for b in backends)
    return type(f"{name}Machine", (LedgerMachine,), {"backends": backends, "__doc__": f"{backends} vs the model."})


# One test per backend against the model (memory, the reference, with more examples), and one
# differential test per other backend against memory: same codes, refusals, ledger and events.
for _backend in BACKENDS:
    _case = _machine((_backend,)).TestCase
    if _backend == "memory":
        _case.settings = settings(max_examples=settings.default.max_examples * 4)
    globals()[f"Test{_backend.title()}Ledger"] = _case
    if _backend != "memory":
        globals()[f"TestMemoryVersus{_backend.title()}"] = _machine(("memory", _backend)).TestCase
del _backend, _case  # pytest collects any TestCase left in the module, whatever its name
