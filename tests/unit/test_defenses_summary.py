"""The start-up block of what defenses are on, and the tenants no budget bounds."""

from __future__ import annotations

import pytest

from comptroller.cli import defenses_summary as summary
from comptroller.cli.defenses_summary import defenses_summary, unbudgeted_tenants
from comptroller.config import Policy
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.scopes import Attribution, Level


def test_the_default_policy_shows_breakers_retries_and_loops_on_and_the_rest_off() -> None:
    """No policy file: breakers (with the relative trip), retries and loops are on; pinning and pacing off."""
    lines = defenses_summary(Policy().defenses())
    text = "\n".join(lines)
    for on in ("retries: on", "loops: on", "spend-rate breakers: on", "x own baseline"):
        assert on in text
    assert "model pinning: off" in text and "pacing: off" in text


def test_budgets_only_says_each_layer_is_off() -> None:
    """With every runtime layer off, the block says so for each, with the section that turns it on."""
    text = "\n".join(defenses_summary(Defenses.budgets_only()))
    assert "off: retries" in text and "loops: off" in text and "spend-rate breakers: off" in text


def test_the_block_says_how_input_ceilings_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """With bpe-openai the exact recount near an edge is named; without it, the extra that adds it."""
    monkeypatch.setattr(summary, "exact_available", lambda: True)
    assert "recounted exactly near a budget's edge" in "\n".join(defenses_summary(Policy().defenses()))
    monkeypatch.setattr(summary, "exact_available", lambda: False)
    assert "comptroller[exact]" in "\n".join(defenses_summary(Policy().defenses()))


def test_a_tenant_without_a_tenant_budget_is_named() -> None:
    """Only tenants with neither their own tenant budget nor a '*' one are listed, once each, sorted."""
    acme = dict(Attribution(namespace="prod", tenant="acme").scopes())[Level.TENANT]
    budgets = [Budget(Level.TENANT, acme, 100_000), Budget(Level.NAMESPACE, "prod", 1_000_000)]
    assert unbudgeted_tenants(["zeta", "acme", "beta", "zeta"], budgets, namespace="prod") == ["beta", "zeta"]
    assert unbudgeted_tenants(["zeta"], [Budget(Level.TENANT, ANY_SCOPE, 1)], namespace="prod") == []
