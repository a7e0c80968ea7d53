"""Budget rules every ledger backend keeps: levels, defaults, periods, alerts, deletion, refusals."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from comptroller.domain.budgets import ANY_SCOPE, Budget, Period
from comptroller.domain.codes import Code
from comptroller.domain.ledger import Event
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import LEVELS, Attribution, Level
from comptroller.ports import LedgerStore
from ledger_kit import T0, USAGE, account_of, assert_accounts_within_limits, attribution, reserve_request

EVERY_LEVEL = attribution("a1", conversation="room", task="job")
"""An attribution every level applies to."""


def _scope(level: Level, who: Attribution = EVERY_LEVEL) -> str:
    return dict(who.scopes())[level]


def _spend(store: LedgerStore, key: str, cost_mc: int, at: datetime, **who: str) -> None:
    """Reserve ``cost_mc`` and settle it at once (asserting both succeed)."""
    result = store.reserve(reserve_request(key, cost_mc, who=attribution(**who) if who else EVERY_LEVEL), at)
    assert result.reservation is not None, result
    assert store.settle(result.reservation.id, USAGE, cost_mc, at).code is Code.SETTLED


# --- the most restrictive level ----------------------------------------------------------------


@pytest.mark.parametrize("tight", LEVELS)
def test_refusal_names_the_tightest_level(store: LedgerStore, tight: Level) -> None:
    """With a budget on every level, the call is refused by, and the refusal names, the tightest one."""
    loose_mc, tight_mc = 5_000, 1_000
    for level in LEVELS:
        store.put_budget(Budget(level, _scope(level), tight_mc if level is tight else loose_mc))
    result = store.reserve(reserve_request("k", tight_mc + 1, who=EVERY_LEVEL), T0)
    assert result.code is Code.BUDGET_EXCEEDED and result.reservation is None
    assert result.refusal is not None
    assert (result.refusal.level, result.refusal.scope) == (tight, _scope(tight))
    assert result.refusal.limit_mc == tight_mc
    assert result.refusal.budget_id == Budget(tight, _scope(tight), tight_mc).id


def test_refusal_names_the_least_remaining_not_the_smallest_limit(store: LedgerStore) -> None:
    """Among refusing budgets the refusal names the one with the least money left."""
    agent = Budget(Level.AGENT, _scope(Level.AGENT), 3_000)
    group = Budget(Level.CONVERSATION, _scope(Level.CONVERSATION), 2_000)
    store.put_budget(agent)
    store.put_budget(group)
    # spend on the agent outside the room, so only the agent account is charged
    _spend(store, "elsewhere", 2_500, T0, agent="a1")
    result = store.reserve(reserve_request("k", group.limit_mc + 1, who=EVERY_LEVEL), T0)
    assert result.refusal is not None
    assert result.refusal.level is Level.AGENT
    assert result.refusal.remaining_mc == agent.limit_mc - 2_500


def test_ties_name_the_broadest_level(store: LedgerStore) -> None:
    """When two refusing budgets have equal money left, the broader level is named."""
    levels = (Level.CONVERSATION, Level.AGENT)
    for level in levels:
        store.put_budget(Budget(level, _scope(level), 1_000))
    result = store.reserve(reserve_request("k", 1_001, who=EVERY_LEVEL), T0)
    assert result.refusal is not None
    assert result.refusal.level is min(levels, key=LEVELS.index)


def test_a_refusal_holds_nothing_anywhere(store: LedgerStore) -> None:
    """Reserve is all or none: when one level refuses, no other level's account holds the ceiling."""
    for level in LEVELS:
        store.put_budget(Budget(level, _scope(level), 500 if level is Level.TASK else 10_000))
    store.reserve(reserve_request("k", 600, who=EVERY_LEVEL), T0)
    assert {a.budget.level: a.reserved_mc for a in store.accounts()} == dict.fromkeys(LEVELS, 0)


def test_admission_holds_the_ceiling_on_every_level(store: LedgerStore) -> None:
    """An admitted call holds its ceiling on the account of every applicable budget."""
    for level in LEVELS:
        store.put_budget(Budget(level, _scope(level), 10_000))
    store.reserve(reserve_request("k", 600, who=EVERY_LEVEL), T0)
    assert {a.budget.level: a.reserved_mc for a in store.accounts()} == dict.fromkeys(LEVELS, 600)


def test_refusal_counts_other_pending_holds(store: LedgerStore) -> None:
    """The refusal reports the account's settled and reserved money at the moment of refusal."""
    budget = Budget(Level.AGENT, _scope(Level.AGENT), 1_000)
    store.put_budget(budget)
    _spend(store, "spent", 300, T0)
    store.reserve(reserve_request("held", 400, who=EVERY_LEVEL), T0)
    result = store.reserve(reserve_request("k", 301, who=EVERY_LEVEL), T0)
    assert result.refusal is not None
    refusal = result.refusal
    assert (refusal.settled_mc, refusal.reserved_mc, refusal.requested_mc) == (300, 400, 301)
    assert refusal.remaining_mc == budget.limit_mc - 300 - 400


def test_refusal_message_names_level_limit_settled_reserved_remaining(store: LedgerStore) -> None:
    """The refusal's message names the level, budget, scope and every amount, in dollars."""
    budget = Budget(Level.CONVERSATION, _scope(Level.CONVERSATION), 1_000)
    store.put_budget(budget)
    _spend(store, "spent", 250, T0)
    store.reserve(reserve_request("held", 500, who=EVERY_LEVEL), T0)
    refusal = store.reserve(reserve_request("k", 400, who=EVERY_LEVEL), T0).refusal
    assert refusal is not None
    message = refusal.message
    for part in ("budget_exceeded", "conversation", budget.id, budget.scope, format_usd(budget.limit_mc),
                 format_usd(250), format_usd(500), format_usd(budget.limit_mc - 750), format_usd(400)):
        assert part in message, part


# --- the group budget and the agent within a conversation ---------------------------------------


def test_group_budget_is_shared_by_every_agent_in_the_room(store: LedgerStore) -> None:
    """A shared group's conversation budget holds the spend of agents of different tenants together."""
    group = Budget(Level.CONVERSATION, ANY_SCOPE, 1_000)
    store.put_budget(group)
    first = replace(attribution("a1", tenant="t1", conversation="room"), conversation_shared=True)
    second = replace(attribution("a2", tenant="t2", conversation="room"), conversation_shared=True)
    assert store.reserve(reserve_request("k1", 600, who=first), T0).code is Code.OK
    refused = store.reserve(reserve_request("k2", 600, who=second), T0)
    assert refused.refusal is not None and refused.refusal.level is Level.CONVERSATION
    other_room = attribution("a2", tenant="t2", conversation="other")
    assert store.reserve(reserve_request("k3", 600, who=other_room), T0).code is Code.OK



def test_a_tenants_conversation_is_its_own(store: LedgerStore) -> None:
    """Two tenants naming one conversation id spend two budgets: one cannot exhaust the other's."""
    store.put_budget(Budget(Level.CONVERSATION, ANY_SCOPE, 1_000))
    mine = attribution("a1", tenant="t1", conversation="secret")
    theirs = attribution("a9", tenant="t2", conversation="secret")
    assert store.reserve(reserve_request("k1", 1_000, who=mine), T0).code is Code.OK
    assert store.reserve(reserve_request("k2", 1_000, who=theirs), T0).code is Code.OK
    refused = store.reserve(reserve_request("k3", 1, who=theirs), T0)
    assert refused.refusal is not None and refused.refusal.scope.startswith("ns|t2|")


def test_agent_in_conversation_budget_is_per_room(store: LedgerStore) -> None:
    """An agent_conversation budget limits one agent in one room, not the same agent elsewhere."""
    store.put_budget(Budget(Level.AGENT_CONVERSATION, ANY_SCOPE, 1_000))
    here, there = attribution("a1", conversation="r1"), attribution("a1", conversation="r2")
    assert store.reserve(reserve_request("k1", 1_000, who=here), T0).code is Code.OK
    assert store.reserve(reserve_request("k2", 1, who=here), T0).code is Code.BUDGET_EXCEEDED
    assert store.reserve(reserve_request("k3", 1_000, who=there), T0).code is Code.OK
    assert store.reserve(reserve_request("k4", 5_000, who=attribution("a1")), T0).code is Code.OK


# --- defaults and overrides ---------------------------------------------------------------------


def test_default_budget_applies_to_each_scope_separately(store: LedgerStore) -> None:
    """A default budget (scope '*') gives every agent its own account with the default limit."""
    default = Budget(Level.AGENT, ANY_SCOPE, 1_000)
    store.put_budget(default)
    for agent in ("a1", "a2"):
        assert store.reserve(reserve_request(agent, default.limit_mc, who=attribution(agent)), T0).code is Code.OK
    refused = store.reserve(reserve_request("more", 1, who=attribution("a1")), T0).refusal
    assert refused is not None
    assert (refused.budget_id, refused.scope) == (default.id, _scope(Level.AGENT, attribution("a1")))
    assert sorted(a.scope for a in store.accounts()) == sorted(
        _scope(Level.AGENT, attribution(agent)) for agent in ("a1", "a2"))


def test_specific_budget_overrides_the_default(store: LedgerStore) -> None:
    """A budget on one agent replaces that level's default for it, and only for it."""
    default = Budget(Level.AGENT, ANY_SCOPE, 1_000)
    vip_scope = _scope(Level.AGENT, attribution("vip"))
    vip = Budget(Level.AGENT, vip_scope, 5_000)
    store.put_budget(default)
    store.put_budget(vip)
    assert store.reserve(reserve_request("v", vip.limit_mc, who=attribution("vip")), T0).code is Code.OK
    refused = store.reserve(reserve_request("a", default.limit_mc + 1, who=attribution("a1")), T0)
    assert refused.code is Code.BUDGET_EXCEEDED
    assert [(a.budget.id, a.reserved_mc) for a in store.accounts() if a.scope == vip_scope] == [
        (vip.id, vip.limit_mc)]


def test_default_of_another_period_still_applies(store: LedgerStore) -> None:
    """A specific total budget does not lift a daily default: budgets of different periods both hold."""
    daily_default = Budget(Level.AGENT, ANY_SCOPE, 1_000, period=Period.DAY)
    vip = Budget(Level.AGENT, _scope(Level.AGENT, attribution("vip")), 5_000)
    store.put_budget(daily_default)
    store.put_budget(vip)
    refused = store.reserve(reserve_request("v", daily_default.limit_mc + 1, who=attribution("vip")), T0).refusal
    assert refused is not None and refused.budget_id == daily_default.id


# --- periods ------------------------------------------------------------------------------------


def _next_boundary(period: Period, tz: str, at: datetime) -> datetime:
    """The first instant of the period after the one containing ``at``, read on ``tz``'s calendar."""
    zone = ZoneInfo(tz)
    day = at.astimezone(zone).date()
    if period is Period.DAY:
        start = day + timedelta(days=1)
    elif period is Period.WEEK:
        start = day + timedelta(days=7 - day.weekday())
    else:
        start = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return datetime(start.year, start.month, start.day, tzinfo=zone).astimezone(UTC)


PERIOD_CASES = [
    (Period.DAY, "UTC", T0),
    (Period.DAY, "America/New_York", T0),
    (Period.DAY, "America/New_York", datetime(2024, 3, 10, 3, 0, tzinfo=UTC)),  # the night DST starts
    (Period.DAY, "Asia/Kolkata", T0),
    (Period.WEEK, "UTC", T0),
    (Period.WEEK, "Asia/Tokyo", T0),
    (Period.MONTH, "UTC", T0),
    (Period.MONTH, "Australia/Sydney", T0),
    (Period.MONTH, "UTC", datetime(2024, 12, 20, tzinfo=UTC)),  # the year rolls over too
]


@pytest.mark.parametrize(("period", "tz", "start"), PERIOD_CASES, ids=str)
def test_period_rolls_over_at_the_boundary(store: LedgerStore, period: Period, tz: str, start: datetime) -> None:
    """A spent periodic budget refuses until the local calendar boundary, then admits in a fresh account."""
    budget = Budget(Level.AGENT, ANY_SCOPE, 1_000, period=period, timezone=tz)
    store.put_budget(budget)
    boundary = _next_boundary(period, tz, start)
    _spend(store, "fill", budget.limit_mc, boundary - timedelta(seconds=1), agent="a1")
    just_before = store.reserve(reserve_request("k1", 1), boundary - timedelta(microseconds=1))
    assert just_before.code is Code.BUDGET_EXCEEDED
    assert store.reserve(reserve_request("k2", budget.limit_mc), boundary).code is Code.OK
    new_key = boundary.astimezone(ZoneInfo(tz)).date().isoformat()
    by_period = {a.period_key: (a.settled_mc, a.reserved_mc) for a in store.accounts()}
    assert by_period[new_key] == (0, budget.limit_mc)
    assert sorted(by_period.values()) == [(0, budget.limit_mc), (budget.limit_mc, 0)]


def test_spend_is_charged_to_the_period_of_admission(store: LedgerStore) -> None:
    """A call admitted before midnight and settled after it is charged to the day it was admitted."""
    budget = Budget(Level.AGENT, ANY_SCOPE, 1_000, period=Period.DAY)
    store.put_budget(budget)
    boundary = _next_boundary(Period.DAY, "UTC", T0)
    reservation = store.reserve(reserve_request("k", 700, ttl_s=600), boundary - timedelta(seconds=30)
                                ).reservation
    assert reservation is not None
    assert store.settle(reservation.id, USAGE, 600, boundary + timedelta(seconds=30)).code is Code.SETTLED
    day_before = (boundary - timedelta(days=1)).date().isoformat()
    assert [(a.period_key, a.settled_mc, a.reserved_mc) for a in store.accounts()] == [(day_before, 600, 0)]
    assert store.reserve(reserve_request("k2", budget.limit_mc), boundary).code is Code.OK


def test_total_budget_never_rolls_over(store: LedgerStore) -> None:
    """A total budget spent today still refuses a year later."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 1_000))
    _spend(store, "fill", 1_000, T0, agent="a1")
    assert store.reserve(reserve_request("k", 1), T0 + timedelta(days=366)).code is Code.BUDGET_EXCEEDED


# --- alerts -------------------------------------------------------------------------------------


def _alerts(store: LedgerStore) -> list[tuple[str, int]]:
    return [(e.detail["period"], e.detail["threshold_pct"]) for e in store.events("alert")]


def _reached(budget: Budget, settled_mc: int) -> list[int]:
    return [p for p in budget.alert_thresholds_pct if settled_mc * 100 >= p * budget.limit_mc]


def test_alerts_fire_once_per_threshold(store: LedgerStore) -> None:
    """Settles fire each of 50, 80 and 100 % exactly once, when the settled spend first reaches it."""
    budget = Budget(Level.AGENT, ANY_SCOPE, 1_000, period=Period.DAY)
    store.put_budget(budget)
    period = T0.date().isoformat()
    settled = 0
    for i, cost in enumerate((400, 100, 299, 1, 150, 0, 50)):
        _spend(store, f"k{i}", cost, T0, agent="a1")
        settled += cost
        assert _alerts(store) == [(period, p) for p in _reached(budget, settled)]
    assert settled == budget.limit_mc


def test_one_settle_can_fire_several_thresholds(store: LedgerStore) -> None:
    """A settle jumping from 0 to 100 % fires 50, 80 and 100 in ascending order, with the amounts seen."""
    budget = Budget(Level.AGENT, _scope(Level.AGENT), 1_000)
    store.put_budget(budget)
    _spend(store, "all", budget.limit_mc, T0)
    events = store.events("alert")
    assert [e.detail["threshold_pct"] for e in events] == list(budget.alert_thresholds_pct)
    for event in events:
        assert (event.level, event.scope, event.code) == (
            "agent", budget.scope, f"budget_{event.detail['threshold_pct']}pct")
        assert (event.detail["budget_id"], event.detail["limit_mc"], event.detail["settled_mc"]) == (
            budget.id, budget.limit_mc, budget.limit_mc)
    assert account_of(store, budget, budget.scope).alert_pct_fired == max(budget.alert_thresholds_pct)


def test_alerts_fire_again_in_the_next_period(store: LedgerStore) -> None:
    """Each period's account fires its own alerts once."""
    budget = Budget(Level.AGENT, ANY_SCOPE, 1_000, period=Period.DAY, alert_thresholds_pct=(50,))
    store.put_budget(budget)
    days = [T0 + timedelta(days=d) for d in range(3)]
    for i, day in enumerate(days):
        _spend(store, f"a{i}", 600, day, agent="a1")
        _spend(store, f"b{i}", 100, day, agent="a1")
    assert _alerts(store) == [(d.date().isoformat(), 50) for d in days]


def test_thresholds_above_100_fire_after_a_ceiling_miss(store: LedgerStore) -> None:
    """A threshold above 100 % fires when a settle above its ceiling pushes spend past it."""
    budget = Budget(Level.AGENT, ANY_SCOPE, 1_000, alert_thresholds_pct=(100, 150))
    store.put_budget(budget)
    reservation = store.reserve(reserve_request("k", budget.limit_mc), T0).reservation
    assert reservation is not None
    store.settle(reservation.id, USAGE, budget.limit_mc * 2, T0)
    assert [p for _, p in _alerts(store)] == [100, 150]


def test_zero_limit_admits_only_free_calls_and_fires_no_alert(store: LedgerStore) -> None:
    """A zero limit admits a zero ceiling, refuses any other, and never divides by zero in alerts."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 0))
    assert store.reserve(reserve_request("k1", 1), T0).code is Code.BUDGET_EXCEEDED
    free = store.reserve(reserve_request("k2", 0), T0).reservation
    assert free is not None
    assert store.settle(free.id, USAGE, 0, T0).code is Code.SETTLED
    assert store.events("alert") == []


# --- budget changes -----------------------------------------------------------------------------


def test_budgets_are_listed_by_id(store: LedgerStore) -> None:
    """budgets() returns every budget once, ordered by id, as it was put."""
    budgets = [Budget(Level.TENANT, ANY_SCOPE, 5), Budget(Level.AGENT, "ns|t1|a1", 7, period=Period.WEEK,
                                                          timezone="Europe/Paris", alert_thresholds_pct=(10, 90)),
               Budget(Level.AGENT, ANY_SCOPE, 3)]
    for budget in budgets:
        store.put_budget(budget)
    assert store.budgets() == sorted(budgets, key=lambda b: b.id)


def test_put_budget_replaces_the_limit(store: LedgerStore) -> None:
    """Putting a budget with the same level, scope and period replaces its limit for accounts and admission."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 1_000))
    assert store.reserve(reserve_request("k1", 800), T0).code is Code.OK
    raised = Budget(Level.AGENT, ANY_SCOPE, 2_000)
    store.put_budget(raised)
    assert store.budgets() == [raised]
    assert [a.budget for a in store.accounts()] == [raised]
    assert store.reserve(reserve_request("k2", 1_200), T0).code is Code.OK
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 1_000))
    assert store.reserve(reserve_request("k3", 0), T0).code is Code.BUDGET_EXCEEDED


def test_deleted_budget_no_longer_constrains(store: LedgerStore) -> None:
    """Deleting a budget lifts its limit; holds on it still resolve; re-creating it brings its history back."""
    budget = Budget(Level.AGENT, ANY_SCOPE, 1_000)
    store.put_budget(budget)
    held = store.reserve(reserve_request("held", 1_000), T0).reservation
    assert held is not None
    assert store.reserve(reserve_request("k1", 500), T0).code is Code.BUDGET_EXCEEDED
    assert store.delete_budget(budget.id) is True
    assert store.delete_budget(budget.id) is False
    assert store.budgets() == []
    assert store.accounts() == []
    assert store.reserve(reserve_request("k2", 5_000), T0).code is Code.OK
    assert store.settle(held.id, USAGE, 900, T0).code is Code.SETTLED
    assert store.events("alert") == []
    store.put_budget(budget)
    account = account_of(store, budget, _scope(Level.AGENT, attribution()))
    assert (account.settled_mc, account.reserved_mc) == (900, 0)


def test_deleting_an_unknown_budget_is_false(store: LedgerStore) -> None:
    """delete_budget answers False for an id it never had."""
    assert store.delete_budget("agent:total:*") is False


# --- events -------------------------------------------------------------------------------------


def test_events_are_kept_in_order_and_filtered_by_kind(store: LedgerStore) -> None:
    """record_event appends; events() returns them in order, all or of one kind."""
    events = [Event(T0 + timedelta(seconds=i), kind, f"code{i}", "agent", "ns|t1|a1", {"n": i})
              for i, kind in enumerate(("refusal", "alert", "refusal"))]
    for event in events:
        store.record_event(event)
    assert store.events() == events
    assert store.events("refusal") == [e for e in events if e.kind == "refusal"]
    assert store.events("breaker") == []


def test_read_back_accounts_keep_the_invariant_after_many_calls(store: LedgerStore) -> None:
    """After a mix of settles, releases and refusals, every account read back keeps settled + reserved <= limit."""
    for level in LEVELS:
        store.put_budget(Budget(level, ANY_SCOPE, 3_000))
    for i in range(30):
        who = attribution(f"a{i % 3}", conversation=f"r{i % 2}", task=f"t{i % 4}")
        result = store.reserve(reserve_request(f"k{i}", 250 + 10 * i, who=who), T0)
        if result.reservation is not None and i % 3 == 0:
            store.settle(result.reservation.id, USAGE, 200, T0)
        elif result.reservation is not None and i % 3 == 1:
            store.release(result.reservation.id, T0)
    assert_accounts_within_limits(store.accounts())
