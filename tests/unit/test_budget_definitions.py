"""Budget definitions, periods, scopes and the admission rule, without any store."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from comptroller.domain.admission import account_keys, alert_thresholds_crossed, applicable_budgets, decide
from comptroller.domain.budgets import (
    ANY_SCOPE,
    DEFAULT_ALERT_THRESHOLDS_PCT,
    Budget,
    BudgetError,
    Period,
    period_bounds,
    period_key,
)
from comptroller.domain.ledger import AccountView, ReserveRequest
from comptroller.domain.scopes import LEVELS, Attribution, AttributionError, Level, scope_key

# --- budget validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [-1, 1.5, "100", None, True])
def test_budget_rejects_a_bad_limit(limit: object) -> None:
    """The limit must be a non-negative int of millicents; the error names the level, scope and value."""
    with pytest.raises(BudgetError, match=r"agent 'ns\|t\|a'.*non-negative integer"):
        Budget(Level.AGENT, scope_key("ns", "t", "a"), limit)  # type: ignore[arg-type]


def test_budget_rejects_an_unknown_period_listing_the_allowed_ones() -> None:
    """An unknown period is a BudgetError listing every period."""
    with pytest.raises(BudgetError, match="fortnight") as info:
        Budget(Level.AGENT, ANY_SCOPE, 1, period="fortnight")  # type: ignore[arg-type]
    assert all(p.value in str(info.value) for p in Period)


def test_budget_rejects_an_unknown_level_listing_the_allowed_ones() -> None:
    """An unknown level is a BudgetError listing every level."""
    with pytest.raises(BudgetError, match="galaxy") as info:
        Budget("galaxy", ANY_SCOPE, 1)  # type: ignore[arg-type]
    assert all(level.value in str(info.value) for level in LEVELS)


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "", "../etc/passwd", "utc+2"])
def test_budget_rejects_an_unknown_time_zone(tz: str) -> None:
    """A time zone that is not an IANA name is a BudgetError naming it."""
    with pytest.raises(BudgetError, match="unknown time zone"):
        Budget(Level.AGENT, ANY_SCOPE, 1, period=Period.DAY, timezone=tz)


@pytest.mark.parametrize("thresholds", [(0,), (1001,), (-5,), (50.0,), ("80",), (50, "80"), (True,),
                                        tuple(range(1, 18)), 50, None])
def test_budget_rejects_bad_alert_thresholds(thresholds: object) -> None:
    """Thresholds must be up to 16 integers in 1..1000; anything else is a BudgetError, never a TypeError."""
    with pytest.raises(BudgetError, match="alert thresholds"):
        Budget(Level.AGENT, ANY_SCOPE, 1, alert_thresholds_pct=thresholds)  # type: ignore[arg-type]


def test_budget_normalises_thresholds_and_accepts_strings_for_enums() -> None:
    """Thresholds are deduplicated and sorted; level and period may be given as their string values."""
    budget = Budget("agent", ANY_SCOPE, 5, period="day", alert_thresholds_pct=(80, 50, 80, 1000))  # type: ignore[arg-type]
    assert budget.alert_thresholds_pct == (50, 80, 1000)
    assert (budget.level, budget.period) == (Level.AGENT, Period.DAY)
    assert Budget(Level.AGENT, ANY_SCOPE, 5).alert_thresholds_pct == DEFAULT_ALERT_THRESHOLDS_PCT


def test_budget_rejects_an_empty_scope() -> None:
    """An empty scope is neither a scope key nor '*'."""
    with pytest.raises(BudgetError, match="scope"):
        Budget(Level.AGENT, "", 1)


def test_budget_id_is_level_period_scope() -> None:
    """The id identifies a budget by level, period and scope, so a limit change replaces it."""
    a = Budget(Level.TENANT, "ns|t", 5, period=Period.WEEK)
    b = Budget(Level.TENANT, "ns|t", 9, period=Period.WEEK)
    assert a.id == b.id == f"{Level.TENANT}:{Period.WEEK}:ns|t"
    assert a.id != Budget(Level.TENANT, "ns|t", 5, period=Period.DAY).id


# --- periods --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"])
@pytest.mark.parametrize("at", [datetime(2024, 3, 10, 6, 59, tzinfo=UTC), datetime(2024, 12, 31, 23, 30, tzinfo=UTC),
                                datetime(2024, 2, 29, 12, tzinfo=UTC)])
def test_period_key_is_the_local_first_day(tz: str, at: datetime) -> None:
    """The key of day, week and month is the ISO date their local period starts on; total is 'total'."""
    local = at.astimezone(ZoneInfo(tz)).date()
    assert period_key(Period.DAY, tz, at) == local.isoformat()
    assert period_key(Period.WEEK, tz, at) == (local - timedelta(days=local.weekday())).isoformat()
    assert period_key(Period.MONTH, tz, at) == date(local.year, local.month, 1).isoformat()
    assert period_key(Period.TOTAL, tz, at) == "total"


def test_period_key_rejects_naive_datetimes() -> None:
    """A naive instant has no calendar day; period_key refuses it."""
    with pytest.raises(ValueError, match="aware"):
        period_key(Period.DAY, "UTC", datetime(2024, 1, 1))


@pytest.mark.parametrize("period", [Period.DAY, Period.WEEK, Period.MONTH])
@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Australia/Sydney"])
def test_period_bounds_contain_the_instant_and_share_its_key(period: Period, tz: str) -> None:
    """The bounds are local midnights with start <= at < end; start has the same key, end the next one."""
    for at in (datetime(2024, 3, 10, 7, 30, tzinfo=UTC), datetime(2024, 11, 3, 5, 30, tzinfo=UTC),
               datetime(2024, 12, 31, 23, 59, tzinfo=UTC)):
        bounds = period_bounds(period, tz, at)
        assert bounds is not None
        start, end = bounds
        assert start <= at < end
        assert period_key(period, tz, start) == period_key(period, tz, at) != period_key(period, tz, end)
        assert period_key(period, tz, end - timedelta(microseconds=1)) == period_key(period, tz, at)
        assert (start.astimezone(ZoneInfo(tz)).time(), end.astimezone(ZoneInfo(tz)).time()) == (
            datetime.min.time(), datetime.min.time())
    assert period_bounds(Period.TOTAL, tz, datetime(2024, 1, 1, tzinfo=UTC)) is None


# --- scopes ---------------------------------------------------------------------------------------


def test_scope_key_escapes_separators_so_keys_never_collide() -> None:
    """A '|' or '\\' inside an id is escaped, so different id tuples never give the same key."""
    assert scope_key("a|b", "c") != scope_key("a", "b|c")
    assert scope_key("a|b", "c") == "a\\|b|c"
    assert scope_key("a\\", "b") == "a\\\\|b"
    assert scope_key("a\\", "|b") != scope_key("a\\|", "b")


ids = st.text(alphabet="ab|\\ ", min_size=1, max_size=5).filter(str.strip)


@given(ns=ids, tenant=ids, agent=ids, conversation=ids, task=ids)
def test_scopes_are_the_scope_keys_of_the_ids(ns: str, tenant: str, agent: str, conversation: str,
                                              task: str) -> None:
    """Each level's key is scope_key of the ids in the scopes table, whatever separators they contain."""
    who = Attribution(namespace=ns, tenant=tenant, agent=agent, conversation=conversation, task=task)
    assert dict(who.scopes()) == {
        Level.NAMESPACE: scope_key(ns), Level.TENANT: scope_key(ns, tenant),
        Level.AGENT: scope_key(ns, tenant, agent), Level.AGENT_CONVERSATION: scope_key(ns, tenant, agent, conversation),
        Level.CONVERSATION: scope_key(ns, tenant, conversation), Level.TASK: scope_key(ns, tenant, task)}
    shared = Attribution(namespace=ns, tenant=tenant, agent=agent, conversation=conversation,
                         conversation_shared=True)
    assert dict(shared.scopes())[Level.CONVERSATION] == scope_key(ns, conversation)


@given(a=st.lists(ids, min_size=1, max_size=4), b=st.lists(ids, min_size=1, max_size=4))
@example(a=["a\\", "b"], b=["a|b"])
def test_scope_keys_of_different_ids_differ(a: list[str], b: list[str]) -> None:
    """scope_key is injective: two different id tuples never share a key."""
    assume(a != b)
    assert scope_key(*a) != scope_key(*b)


def test_attribution_scopes_per_level() -> None:
    """Namespace, tenant and agent always apply; conversation adds two levels and a task one, broadest first."""
    bare = Attribution(namespace="n", tenant="t", agent="a")
    assert bare.scopes() == ((Level.NAMESPACE, "n"), (Level.TENANT, "n|t"), (Level.AGENT, "n|t|a"))
    full = Attribution(namespace="n", tenant="t", agent="a", conversation="c", task="k", phase="p")
    assert full.scopes() == (*bare.scopes(), (Level.AGENT_CONVERSATION, "n|t|a|c"), (Level.CONVERSATION, "n|t|c"),
                             (Level.TASK, "n|t|k"))
    assert [level for level, _ in full.scopes()] == list(LEVELS)


def test_conversation_scope_is_shared_across_tenants() -> None:
    """A shared group's key depends on namespace and conversation only, not on who speaks."""
    one = dict(Attribution(namespace="n", tenant="t1", agent="a1", conversation="room",
                           conversation_shared=True).scopes())
    two = dict(Attribution(namespace="n", tenant="t2", agent="a2", conversation="room",
                           conversation_shared=True).scopes())
    assert one[Level.CONVERSATION] == two[Level.CONVERSATION]
    assert one[Level.AGENT_CONVERSATION] != two[Level.AGENT_CONVERSATION]


def test_a_conversation_or_task_id_is_its_tenants_own() -> None:
    """Two tenants naming the same conversation or task id get two scopes (rule 13: tenants are walls)."""
    one = dict(Attribution(namespace="n", tenant="t1", conversation="room", task="job").scopes())
    two = dict(Attribution(namespace="n", tenant="t2", conversation="room", task="job").scopes())
    for level in (Level.CONVERSATION, Level.TASK, Level.AGENT_CONVERSATION):
        assert one[level] != two[level]
    assert one[Level.CONVERSATION] == scope_key("n", "t1", "room")


def test_shared_needs_a_conversation() -> None:
    """conversation_shared without a conversation is an attribution error."""
    with pytest.raises(AttributionError, match="conversation_shared"):
        Attribution(conversation_shared=True)


@pytest.mark.parametrize(("field", "value"), [("namespace", ""), ("tenant", "  "), ("agent", "x" * 257),
                                              ("conversation", ""), ("task", 7), ("phase", " "), ("agent", None)])
def test_attribution_rejects_empty_long_or_non_string_ids(field: str, value: object) -> None:
    """Ids must be non-empty strings of at most 256 characters; the error names the field."""
    with pytest.raises(AttributionError, match=field):
        Attribution(**{field: value})  # type: ignore[arg-type]


def test_attribution_accepts_the_longest_id() -> None:
    """An id of exactly 256 characters is allowed."""
    assert Attribution(agent="x" * 256).agent == "x" * 256


# --- the admission rule ---------------------------------------------------------------------------


WHO = Attribution(namespace="n", tenant="t", agent="a", conversation="c")


def _view(budget: Budget, settled: int = 0, reserved: int = 0, fired: int = 0) -> AccountView:
    return AccountView(budget, dict(WHO.scopes())[budget.level], "total", settled, reserved, fired)


def test_applicable_budgets_prefer_specific_over_default_per_period() -> None:
    """Per level and period, a scope's own budget replaces the default; unrelated budgets are ignored."""
    default = Budget(Level.AGENT, ANY_SCOPE, 1)
    own = Budget(Level.AGENT, "n|t|a", 2)
    daily_default = Budget(Level.AGENT, ANY_SCOPE, 3, period=Period.DAY)
    other = Budget(Level.AGENT, "n|t|zz", 4)
    no_task = Budget(Level.TASK, ANY_SCOPE, 5)
    group = Budget(Level.CONVERSATION, ANY_SCOPE, 6)
    chosen = applicable_budgets(WHO.scopes(), [default, own, daily_default, other, no_task, group])
    assert sorted(chosen, key=lambda c: c[0].id) == sorted(
        [(own, "n|t|a"), (daily_default, "n|t|a"), (group, "n|t|c")], key=lambda c: c[0].id)
    assert [b.level for b, _ in chosen] == sorted((b.level for b, _ in chosen), key=LEVELS.index)


def test_account_keys_use_each_budget_calendar() -> None:
    """Each account key carries the period of the instant in the budget's own time zone."""
    at = datetime(2024, 3, 1, 23, 30, tzinfo=UTC)
    tokyo = Budget(Level.AGENT, ANY_SCOPE, 1, period=Period.DAY, timezone="Asia/Tokyo")
    keys = account_keys(WHO.scopes(), [tokyo, Budget(Level.AGENT, ANY_SCOPE, 1)], at)
    assert sorted((b.id, s, p) for b, s, p in keys) == sorted([
        (Budget(Level.AGENT, ANY_SCOPE, 1).id, "n|t|a", "total"),
        (tokyo.id, "n|t|a", at.astimezone(ZoneInfo("Asia/Tokyo")).date().isoformat())])


def test_decide_admits_up_to_the_limit_exactly() -> None:
    """settled + reserved + ceiling == limit is admitted; one millicent more is refused."""
    budget = Budget(Level.AGENT, "n|t|a", 1_000)
    view = _view(budget, settled=300, reserved=200)
    assert decide(budget.limit_mc - 500, [view]) is None
    refusal = decide(budget.limit_mc - 500 + 1, [view])
    assert refusal is not None and refusal.remaining_mc == budget.limit_mc - 500


def test_decide_with_no_accounts_admits() -> None:
    """A call no budget applies to is admitted, whatever its ceiling."""
    assert decide(10**12, []) is None


def test_alert_thresholds_crossed_only_once_and_never_for_a_zero_limit() -> None:
    """Thresholds above the last fired one and reached by the new spend are crossed; a zero limit crosses none."""
    budget = Budget(Level.AGENT, "n|t|a", 1_000)
    assert alert_thresholds_crossed(_view(budget), 800) == [50, 80]
    assert alert_thresholds_crossed(_view(budget, fired=50), 800) == [80]
    assert alert_thresholds_crossed(_view(budget, fired=100), 5_000) == []
    assert alert_thresholds_crossed(_view(budget), 499) == []
    assert alert_thresholds_crossed(_view(Budget(Level.AGENT, "n|t|a", 0)), 10) == []


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"idempotency_key": ""}, "idempotency_key"), ({"ceiling_mc": -1}, "ceiling_mc"),
    ({"ceiling_mc": 1.5}, "ceiling_mc"), ({"ttl_s": 0}, "ttl_s"), ({"ttl_s": 86_401}, "ttl_s")])
def test_reserve_request_validates_key_ceiling_and_lease(kwargs: dict[str, object], match: str) -> None:
    """A reserve request needs a key, a non-negative int ceiling and a lease in (0, 24 h]."""
    fields: dict[str, object] = {"idempotency_key": "k", "attribution": WHO, "model": "m", "ceiling_mc": 1,
                                 "input_tokens_max": 1, "output_tokens_max": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        ReserveRequest(**fields)  # type: ignore[arg-type]
