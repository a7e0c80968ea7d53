"""No budget is silently idle (DESIGN.md rule 14), and tenants are walls in the engine (rule 13).

Budget ids name every level above the budget's own (``budget_scope``); a limit below 1 mc is
an error; ``budget list`` and ``db check`` flag budgets that matched no call in their period
(on SQLite and PostgreSQL); and through the engine, another tenant's conversation or task id
is a scope of one's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from comptroller.bootstrap import build_engine
from comptroller.cli.main import app
from comptroller.clock import SystemClock, VirtualClock
from comptroller.config import ConfigError, Policy, load_policy
from comptroller.domain.budgets import (
    ANY_SCOPE,
    SCOPE_IDS,
    Budget,
    BudgetError,
    Period,
    ScopeIdsMissingError,
    budget_scope,
    limit_usd_to_mc,
    period_key,
)
from comptroller.domain.codes import Code
from comptroller.domain.money import usd_to_mc_half_up
from comptroller.domain.reconcile import idle_budgets
from comptroller.domain.scopes import LEVELS, Attribution, Level, scope_key
from comptroller.domain.usage import from_openai
from comptroller.engine import CallRequest, Engine
from comptroller.storage import store_from_url
from postgres.pg_kit import PG_URL, new_schema, require_postgres

runner = CliRunner()
IDS = {"namespace": "prod", "tenant": "acme", "agent": "writer", "conversation": "c|1", "task": "nightly"}


# --- budget_scope ---------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_a_named_scope_is_the_key_of_all_its_ids(level: Level) -> None:
    """With every id its level needs, the scope is scope_key of those ids, broadest first."""
    ids = {name: IDS[name] for name in SCOPE_IDS[level]}
    assert budget_scope(level, **ids) == scope_key(*ids.values())


@pytest.mark.parametrize("level", LEVELS)
def test_no_id_at_all_is_the_levels_wildcard(level: Level) -> None:
    """Naming no id gives the level's documented wildcard, every scope of the level."""
    assert budget_scope(level) == ANY_SCOPE


@pytest.mark.parametrize("level", [lv for lv in LEVELS if len(SCOPE_IDS[lv]) > 1])
def test_the_own_id_without_a_parent_is_refused_naming_the_missing_ids(level: Level) -> None:
    """Naming the level's own id but not the ids above it raises, listing exactly the missing ones."""
    own = SCOPE_IDS[level][-1]
    with pytest.raises(ScopeIdsMissingError) as caught:
        budget_scope(level, **{own: IDS[own]})
    assert caught.value.missing == SCOPE_IDS[level][:-1]
    assert all(name in str(caught.value) for name in caught.value.missing)


def test_the_policy_namespace_stands_for_an_unnamed_namespace_only() -> None:
    """namespace_default fills a missing namespace, never a missing tenant."""
    assert budget_scope(Level.TENANT, tenant="acme", namespace_default="prod") == scope_key("prod", "acme")
    with pytest.raises(ScopeIdsMissingError) as caught:
        budget_scope(Level.AGENT, agent="writer", namespace_default="prod")
    assert caught.value.missing == ("tenant",)


@pytest.mark.parametrize(("level", "ids", "needle"), [
    (Level.AGENT, {"namespace": "prod", "tenant": "acme"}, "agent"),       # parents without the own id
    (Level.TENANT, {"namespace": "prod", "tenant": "acme", "task": "x"}, "task"),   # an id the level ignores
    (Level.AGENT, {"group": "room"}, "group"),                               # group at another level
    (Level.CONVERSATION, {"namespace": "prod", "group": "room", "tenant": "acme"}, "tenant"),
])
def test_ids_that_would_be_ignored_or_widen_are_refused(level: Level, ids: dict[str, str], needle: str) -> None:
    """An id the scope would silently drop, or parents without the own id, is a BudgetError naming it."""
    with pytest.raises(BudgetError, match=needle):
        budget_scope(level, **ids)


def test_a_shared_groups_budget_is_the_namespaces_conversation_scope() -> None:
    """group names a shared group's conversation: the scope every member's calls use."""
    scope = budget_scope(Level.CONVERSATION, namespace="prod", group="room")
    shared = Attribution(namespace="prod", tenant="acme", conversation="room", conversation_shared=True)
    assert dict(shared.scopes())[Level.CONVERSATION] == scope


# --- limits ---------------------------------------------------------------------------------------


def test_a_limit_below_one_millicent_is_an_error_not_zero() -> None:
    """$0.0000001 is refused; $0 and $0.00001 (1 mc) are exact."""
    with pytest.raises(BudgetError, match="below 1 millicent"):
        limit_usd_to_mc(Decimal("0.0000001"))
    assert limit_usd_to_mc(Decimal("0")) == 0
    assert limit_usd_to_mc(Decimal("0.00001")) == 1


@given(st.decimals(min_value=Decimal("0"), max_value=Decimal("1000"), allow_nan=False, places=9))
def test_a_positive_limit_never_becomes_zero(usd: Decimal) -> None:
    """Every limit is refused or at least 1 mc when positive, and equals the half-up conversion."""
    try:
        mc = limit_usd_to_mc(usd)
    except BudgetError:
        assert 0 < usd < Decimal("0.000005")
        return
    assert mc == usd_to_mc_half_up(usd) and (usd == 0 or mc >= 1)


def test_a_policy_limit_below_one_millicent_is_a_config_error(tmp_path: Path) -> None:
    """The policy loader refuses limit_usd = "0.0000001" naming the budget."""
    path = tmp_path / "p.toml"
    path.write_text('[[budgets]]\nlevel = "namespace"\nlimit_usd = "0.0000001"\n')
    with pytest.raises(ConfigError, match="millicent"):
        load_policy(path)


def test_a_policy_budget_without_its_tenant_is_a_config_error(tmp_path: Path) -> None:
    """An agent budget naming no tenant would never match traffic: loading the policy says so."""
    path = tmp_path / "p.toml"
    path.write_text('namespace = "prod"\n[[budgets]]\nlevel = "agent"\nagent = "Programmer"\nlimit_usd = "1"\n')
    with pytest.raises(ConfigError, match="tenant"):
        load_policy(path)


# --- tenant walls in the engine -------------------------------------------------------------------


T0 = datetime(2026, 12, 7, 12, tzinfo=UTC)


def _engine(policy: Policy) -> Engine:
    return build_engine(db_url="memory://", policy=policy, clock=VirtualClock(T0))


def _call(tenant: str, *, conversation: str | None = None, task: str | None = None,
          attempt_id: str | None = None, tokens: int = 100) -> CallRequest:
    return CallRequest(attribution=Attribution(namespace="prod", tenant=tenant, agent="a", conversation=conversation,
                                               task=task),
                       model="gpt-4o-mini", input_tokens_max=tokens, max_tokens=10, attempt_id=attempt_id)


def test_engine_keeps_another_tenants_conversation_budget_out_of_reach() -> None:
    """B's conversation budget is B's: A naming the same id fills only its own, and A's refusal shows A's scope."""
    engine = _engine(Policy(namespace="prod", budgets=[{"level": "conversation", "limit_mc": 1_000}]))
    first = engine.admit(_call("globex", conversation="B-secret-conv"))
    assert first.admitted and first.reservation is not None
    huge = engine.admit(_call("acme", conversation="B-secret-conv", tokens=10**6))
    assert not huge.admitted and huge.verdict is not None
    assert scope_key("prod", "acme", "B-secret-conv") in huge.verdict.message
    assert "globex" not in huge.verdict.message
    assert engine.admit(_call("globex", conversation="B-secret-conv")).admitted


def test_engine_counts_re_attempts_per_tenants_task() -> None:
    """A's attempts at B's task id use A's re-attempt limit; B's own attempts are all still admitted."""
    policy = Policy(namespace="prod", retries={"retries_max_per_day": 1})
    engine = _engine(policy)
    for attempt in ("a1", "a2"):
        assert engine.admit(_call("acme", task="B-nightly", attempt_id=attempt)).admitted
    refused = engine.admit(_call("acme", task="B-nightly", attempt_id="a3"))
    assert refused.verdict is not None and refused.verdict.code is Code.RETRY_LIMIT
    assert "globex" not in refused.verdict.message
    for attempt in ("b1", "b2"):
        assert engine.admit(_call("globex", task="B-nightly", attempt_id=attempt)).admitted


# --- idle budgets ---------------------------------------------------------------------------------


def test_idle_budgets_are_those_without_an_account_this_period() -> None:
    """A budget matching a call is not idle; one on a scope no call uses is, and a day budget last used
    yesterday is idle today with yesterday as its last period."""
    engine = _engine(Policy(namespace="prod"))
    used = Budget(Level.TENANT, scope_key("prod", "acme"), 10**6, period=Period.DAY)
    wrong = Budget(Level.TENANT, scope_key("default", "acme"), 10**6)
    engine.store.put_budget(used)
    engine.store.put_budget(wrong)
    assert engine.admit(_call("acme")).admitted
    accounts = engine.store.accounts()
    idle = idle_budgets(engine.store.budgets(), accounts, T0)
    assert [(i.budget.id, i.last_period_key) for i in idle] == [(wrong.id, None)]
    tomorrow = T0 + timedelta(days=1)
    later = {i.budget.id: i for i in idle_budgets(engine.store.budgets(), accounts, tomorrow)}
    assert later[used.id].last_period_key == period_key(Period.DAY, "UTC", T0)
    assert later[used.id].period_key == period_key(Period.DAY, "UTC", tomorrow)


# --- the CLI on SQLite and PostgreSQL -------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A ledger URL with one settled call of tenant ``acme`` in namespace ``prod`` (now, by the wall clock)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ledger.db"
    else:
        require_postgres()
        url = f"{PG_URL}?options=-csearch_path%3D{new_schema()}"
        assert runner.invoke(app, ["db", "upgrade", "--db", url]).exit_code == 0
    store = store_from_url(url)
    try:
        engine = build_engine(db_url=url, policy=Policy(namespace="prod"), store=store, clock=SystemClock())
        admission = engine.admit(_call("acme"))
        assert admission.reservation is not None
        engine.settle(admission.reservation, from_openai(prompt_tokens=50, completion_tokens=5))
    finally:
        store.close()
    yield url


def _text(output: str) -> str:
    return re.sub(r"\s+", " ", output)


def test_budget_set_without_namespace_is_refused_naming_the_option_and_the_seen_namespaces(db_url: str) -> None:
    """`budget set --level tenant --tenant t1` (no --namespace) writes nothing and names --namespace and 'prod'."""
    result = runner.invoke(app, ["budget", "set", "--level", "tenant", "--tenant", "t1", "--limit-usd", "0.24",
                                 "--db", db_url], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    text = _text(result.output)
    assert "--namespace" in text and "prod" in text
    agent = runner.invoke(app, ["budget", "set", "--level", "agent", "--agent", "Programmer", "--namespace", "prod",
                                "--limit-usd", "1", "--db", db_url], env={"COLUMNS": "250"})
    assert agent.exit_code == 2 and "--tenant" in agent.output and "acme" in _text(agent.output)
    tiny = runner.invoke(app, ["budget", "set", "--level", "namespace", "--namespace", "prod",
                               "--limit-usd", "0.0000001", "--db", db_url])
    assert tiny.exit_code == 2 and "millicent" in _text(tiny.output)
    store = store_from_url(db_url)
    try:
        assert store.budgets() == []
    finally:
        store.close()


def test_budget_list_and_db_check_flag_a_budget_no_call_matched(db_url: str) -> None:
    """A budget on a scope no traffic uses is flagged IDLE by `budget list` and warned of by `db check`."""
    for tenant in ("acme", "nobody"):
        ok = runner.invoke(app, ["budget", "set", "--level", "tenant", "--namespace", "prod", "--tenant", tenant,
                                 "--limit-usd", "5", "--period", "total", "--db", db_url])
        assert ok.exit_code == 0, ok.output
    store = store_from_url(db_url)
    try:  # acme's budget matches a call from now on; nobody's never will
        engine = build_engine(db_url=db_url, policy=Policy(namespace="prod"), store=store, clock=SystemClock())
        admission = engine.admit(_call("acme"))
        assert admission.reservation is not None
        engine.release(admission.reservation)
    finally:
        store.close()
    listed = _text(runner.invoke(app, ["budget", "list", "--db", db_url], env={"COLUMNS": "250"}).output)
    assert listed.count("IDLE") == 1 and "tenant:total:prod|nobody IDLE" in listed
    checked = runner.invoke(app, ["db", "check", "--db", db_url], env={"COLUMNS": "250"})
    assert checked.exit_code == 0, checked.output
    text = _text(checked.output)
    assert text.count("idle budget") == 1 and "prod|nobody" in text
