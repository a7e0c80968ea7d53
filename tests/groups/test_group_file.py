"""Group files: [groups.NAME] tables load into domain groups with their dispatch settings."""

from __future__ import annotations

from pathlib import Path

from comptroller.domain.dispatch import BudgetStep, Kind
from comptroller.groups import load_groups

GROUPS_TOML = """
namespace = "ignored: only [groups] is read"

[groups.review]
conversation = "review-17"
k = 2
cooldown_messages = 1
steps = [[0.6, 2], [0.2, 1]]

[groups.review.loops]
ping_pong_exchanges_max = 4

[[groups.review.members]]
agent = "ana"
role = "writer"
description = "python backend"
tenant = "acme"

[[groups.review.members]]
agent = "cy"
role = "critic"
description = "code review"

[[groups.review.members]]
agent = "dee"
role = "judge"
decides = true

[groups.review.roles.critic]
answers = ["draft"]
isolated = true

[groups.review.roles.judge]
answers = ["draft"]
after = ["critic"]
"""


def test_a_group_file_loads_members_rules_and_settings(tmp_path: Path) -> None:
    """Every field written in the file reaches the group, its rules and its dispatch config."""
    path = tmp_path / "groups.toml"
    path.write_text(GROUPS_TOML)
    (review,) = load_groups(path).values()
    assert (review.id, review.group.conversation) == ("review", "review-17")
    assert [(m.agent, m.role, m.decides) for m in review.group.members] == [
        ("ana", "writer", False), ("cy", "critic", False), ("dee", "judge", True)]
    assert review.tenants == {"ana": "acme", "cy": "default", "dee": "default"}
    assert review.group.rule("critic").isolated and review.group.rule("critic").answers == {Kind.DRAFT}
    assert review.group.in_order(["dee", "cy"]) == ["cy", "dee"]
    assert (review.config.k, review.config.cooldown_messages) == (2, 1)
    assert review.config.steps == (BudgetStep(0.6, 2), BudgetStep(0.2, 1))
    assert review.config.loops.ping_pong_exchanges_max == 4
