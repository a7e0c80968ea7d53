"""The UI's pure view functions: who sees which scope, the spend series, budget rows, the request log rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.budgets import Budget, Period
from comptroller.domain.ledger import AccountView, Event, UsageRecord
from comptroller.domain.scopes import Attribution, Level, scope_key
from comptroller.domain.usage import Usage
from comptroller.ui.views import Filters, Viewer, budget_rows, request_rows, series, tenant_of_scope

NS = "prod"
ACME = Viewer("k1", admin=False, tenant="acme")
ADMIN = Viewer("k0", admin=True, tenant=None)
ids = st.text(alphabet="ab|\\c", min_size=1, max_size=6)


@given(tenant=ids, rest=st.lists(ids, min_size=1, max_size=3))
def test_tenant_of_scope_reads_back_the_tenant_of_any_scope_below_it(tenant: str, rest: list[str]) -> None:
    """Whatever ``|`` or ``\\`` the ids hold, a tenant's scopes (tenant level and below) name that tenant."""
    assert tenant_of_scope(NS, scope_key(NS, tenant), Level.TENANT) == tenant
    assert tenant_of_scope(NS, scope_key(NS, tenant, *rest), Level.AGENT) == tenant


def test_namespace_and_shared_group_scopes_belong_to_no_tenant() -> None:
    """A namespace-wide scope, a shared group's conversation (ns|group) and another namespace are no tenant's."""
    assert tenant_of_scope(NS, NS, Level.NAMESPACE) is None
    assert tenant_of_scope(NS, scope_key(NS, "acme"), Level.CONVERSATION) is None  # a shared group named acme
    assert tenant_of_scope(NS, scope_key("other", "acme", "a"), Level.AGENT) is None
    assert not ACME.sees_scope(NS, scope_key(NS, "acme"), Level.CONVERSATION)
    assert not ACME.sees_scope(NS, NS, Level.NAMESPACE)
    assert ACME.sees_scope(NS, scope_key(NS, "acme", "writer"), Level.AGENT)
    assert not ACME.sees_scope(NS, scope_key(NS, "acme2", "writer"), Level.AGENT)
    assert ADMIN.sees_scope(NS, NS, Level.NAMESPACE)


def _record(tenant: str, agent: str, day: date, cost_mc: int) -> UsageRecord:
    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    attribution = Attribution(namespace=NS, tenant=tenant, agent=agent)
    return UsageRecord(f"r-{tenant}-{agent}-{day}-{cost_mc}", "k", attribution, "m", at, at, Usage(10, 5), cost_mc,
                       cost_mc * 2, "settled")


@given(costs=st.lists(st.tuples(st.integers(0, 200), st.sampled_from("abcdefghij"), st.integers(0, 10_000)),
                      max_size=40), span=st.integers(0, 200))
def test_series_keeps_every_millicent(costs: list[tuple[int, str, int]], span: int) -> None:
    """The chart's points sum to the filtered records' total, whatever the range's length (daily or weekly)."""
    start = date(2024, 1, 1)
    records = [_record("acme", agent, start + timedelta(days=offset % (span + 1)), mc) for offset, agent, mc in costs]
    chart = series(records, Filters(start, start + timedelta(days=span)))
    assert sum(sum(v) for v in chart.values) == sum(r.cost_mc for r in records)
    assert len(chart.names) <= 9 and all(len(v) == len(chart.days) for v in chart.values)


def test_budget_rows_hide_other_tenants_and_name_the_next_reset() -> None:
    """A tenant sees its own accounts only; a current daily account resets at the next UTC midnight."""
    now = datetime(2026, 3, 5, 15, tzinfo=UTC)
    daily = Budget(level=Level.TENANT, scope="*", limit_mc=1000, period=Period.DAY)
    accounts = [AccountView(daily, scope_key(NS, "acme"), "2026-03-05", 250, 50),
                AccountView(daily, scope_key(NS, "globex"), "2026-03-05", 900, 0),
                AccountView(Budget(level=Level.NAMESPACE, scope="*", limit_mc=10, period=Period.TOTAL), NS, "total",
                            1, 0)]
    rows, _ = budget_rows(accounts, [], viewer=ACME, namespace=NS, now=now)
    assert [(r.scope, r.remaining_mc, r.utilisation) for r in rows] == [(scope_key(NS, "acme"), 700, 0.3)]
    assert rows[0].next_reset == datetime(2026, 3, 6, tzinfo=UTC)
    assert len(budget_rows(accounts, [], viewer=ADMIN, namespace=NS, now=now)[0]) == 3


def test_request_rows_search_and_wall() -> None:
    """The request log shows the viewer's calls and refusals only, filtered by every search field."""
    day = date(2026, 3, 5)
    records = [_record("acme", "writer", day, 10), _record("globex", "writer", day, 20)]
    refusal = Event(datetime(2026, 3, 5, 13, tzinfo=UTC), "refusal", "budget_exceeded", "tenant",
                    scope_key(NS, "acme"), {"agent": "writer", "message": "over budget", "requested_mc": 99})
    rows = request_rows(records, [refusal], viewer=ACME, namespace=NS, search={"outcome": "budget"})
    assert [(r.tenant, r.outcome, r.reason, r.ceiling_mc) for r in rows] == [("acme", "budget_exceeded",
                                                                              "over budget", 99)]
    everything = request_rows(records, [refusal], viewer=ACME, namespace=NS, search={})
    assert {r.tenant for r in everything} == {"acme"} and len(everything) == 2
