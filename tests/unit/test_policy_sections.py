"""One policy file configures budgets, defenses, routing and groups; every mistake names file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from comptroller.config import ConfigError, load_policy
from comptroller.domain.defenses.pacing import PaceAction
from comptroller.domain.scopes import Level

GOOD = """
namespace = "ns"
[breakers]
threshold_usd = "2.00"
window_s = 30
[[breakers.overrides]]
level = "agent"
agent = "Programmer"
enabled = false
[kill_switch]
window_spend_usd = "20"
budget_pct_max = 90
[retries]
retries_max_per_day = 1
[loops]
identical_max = 3
[pinning.agents.Programmer]
models = ["gpt-4o-mini"]
[pacing]
action = "downgrade"
[runs]
duration_s_max = 600
[cascades.support]
[[cascades.support.tiers]]
name = "cheap"
models = ["gpt-4o-mini"]
gates = [{ kind = "non_empty" }]
[[cascades.support.tiers]]
name = "strong"
models = ["gpt-4o"]
[groups.room]
k = 2
[[groups.room.members]]
agent = "judge"
role = "judge"
description = "decides"
decides = true
[[groups.room.members]]
agent = "writer"
role = "writer"
description = "writes drafts"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_section_is_read_into_the_domain(tmp_path: Path) -> None:
    """Each section lands in its domain object with the values written."""
    policy = load_policy(_write(tmp_path, GOOD))
    defenses = policy.defenses()
    assert defenses.breakers is not None
    agent_breaker = defenses.breakers.levels[Level.AGENT]
    assert (agent_breaker.threshold_mc, agent_breaker.window_s) == (200_000, 30)
    assert defenses.breakers.overrides[(Level.AGENT, "ns|default|Programmer")] is None
    kill = defenses.kill_switches[Level.NAMESPACE]
    assert (kill.window_spend_mc_max, kill.budget_pct_max) == (2_000_000, 90)
    assert defenses.retries is not None and defenses.retries.retries_max_per_day == 1
    assert defenses.loops is not None and defenses.loops.identical_max == 3
    assert defenses.pinning is not None and defenses.pinning.allows("Programmer", "gpt-4o-mini")
    assert not defenses.pinning.allows("Programmer", "gpt-4o")
    assert defenses.pacing is not None and defenses.pacing.action is PaceAction.DOWNGRADE
    assert policy.runs is not None and policy.runs.duration_s_max == 600
    assert set(policy.group_definitions()) == {"room"}


def test_defaults_switch_on_breakers_retries_and_loops_only() -> None:
    """An empty policy guards every agent and conversation, counts retries, detects loops; nothing else."""
    defenses = load_policy(None).defenses()
    assert defenses.breakers is not None and set(defenses.breakers.levels) == {Level.AGENT, Level.CONVERSATION}
    assert defenses.retries is not None and defenses.loops is not None
    assert (defenses.pinning, defenses.pacing, dict(defenses.kill_switches)) == (None, None, {})


@pytest.mark.parametrize(("text", "words"), [
    ("[breakers]\nwindow_s = 0\n", "window_s"),
    ("[breakers]\ncooldown_s_start = 10\ncooldown_s_max = 5\n", "cooldown_s_max"),
    ("[breakers]\nthreshold_usd = \"-1\"\n", "threshold_usd"),
    ("[breakers]\nthreshold_usd = \"1\"\nthreshold_mc = 5\n", "threshold_usd or threshold_mc"),
    ("[[breakers.overrides]]\nlevel = \"agent\"\n", "needs the ids"),
    ("[kill_switch]\nbudget_pct_max = 101\n", "budget_pct_max"),
    ("[loops]\nnear_duplicate_min = 1.5\n", "near_duplicate_min"),
    ("[pinning.agents.a]\nmodels = []\n", "at least one allowed model"),
    ("[pacing]\nperiods = [\"total\"]\n", "total budget"),
    ("[runs]\nduration_s_max = 0\n", "duration_s_max"),
    ("[cascades.empty]\ntiers = []\n", "empty"),
    ("[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"no-such-model-xyz\"]\n", "no-such-model-xyz"),
    ("[groups.g]\nk = 0\n", "groups.g"),
])
def test_bad_sections_name_the_file_and_field(tmp_path: Path, text: str, words: str) -> None:
    """A bad value is a ConfigError naming the file and the field or rule, raised at load time."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert str(path) in message and words in message, message
