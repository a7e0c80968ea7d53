"""Bad input gets a clear error naming what is wrong and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from group_kit import MEMBERS, RULES, msg, studio

from comptroller.domain.dispatch import (
    BudgetStep,
    DispatchConfig,
    Dispatcher,
    Group,
    GroupConfigError,
    Kind,
    Member,
    MessageError,
    NoDeciderError,
    RoleRule,
    RoleRuleCycleError,
    UnknownMemberError,
)
from comptroller.groups import GroupFileError, load_groups


def test_a_mention_of_a_non_member_names_the_closest_members() -> None:
    """Mentioning someone outside the group is an error that suggests the likely member."""
    with pytest.raises(UnknownMemberError, match=r"'bne' is not a member of group 'studio'; did you mean 'ben'"):
        studio().dispatch(msg(1, "user", "@bne hi", mentions=["bne"]), [], 1.0)


def test_more_mentions_than_k_is_refused() -> None:
    """A message may summon at most k members."""
    with pytest.raises(MessageError, match=r"mentions 3 members; at most k = 2"):
        studio(k=2).dispatch(msg(1, "user", "hi", mentions=["ana", "ben", "eve"]), [], 1.0)


def test_only_a_decider_ships_a_verdict() -> None:
    """A verdict from a member without `decides` is refused, naming who may post one."""
    with pytest.raises(MessageError, match=r"'ana' may not post a verdict .* only members who decide \(dee\)"):
        studio().dispatch(msg(1, "ana", "ship it", Kind.VERDICT), [], 1.0)


def test_a_group_without_a_decider_fails_when_a_rule_needs_one() -> None:
    """Wrap-up and loop escalation ask the decider: without one the group is refused, unless both are off."""
    no_judge = Group("g", tuple(m for m in MEMBERS if not m.decides), {r: RULES[r] for r in ("writer", "critic")})
    with pytest.raises(NoDeciderError, match=r"no member with `decides`.*wrap_up and escalate_loops"):
        Dispatcher(no_judge)
    with pytest.raises(NoDeciderError, match=r"set escalate_loops = false"):
        Dispatcher(no_judge, DispatchConfig(wrap_up=False))
    assert Dispatcher(no_judge, DispatchConfig(wrap_up=False, escalate_loops=False)).decider is None


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_k_below_one_is_refused(k: object) -> None:
    """k must be an integer >= 1."""
    with pytest.raises(GroupConfigError, match=r"k \(the most responders per message\) must be an integer >= 1"):
        DispatchConfig(k=k)  # type: ignore[arg-type]


def test_cyclic_role_rules_are_refused_with_the_cycle() -> None:
    """critic after judge after critic has no order; the error prints the cycle."""
    rules = {"critic": RoleRule("critic", after=("judge",)), "judge": RoleRule("judge", after=("critic",))}
    with pytest.raises(RoleRuleCycleError, match=r"cycle \((critic -> judge -> critic|judge -> critic -> judge)"):
        Group("g", MEMBERS, rules)
    with pytest.raises(RoleRuleCycleError, match="after itself"):
        RoleRule("judge", after=("judge",))


def test_rules_for_unknown_roles_and_repeated_agents_are_refused() -> None:
    """A role rule must name roles members have; an agent is listed once."""
    with pytest.raises(GroupConfigError, match=r"names role 'editor', which no member has"):
        Group("g", MEMBERS, {"judge": RoleRule("judge", after=("editor",))})
    with pytest.raises(GroupConfigError, match=r"lists agent 'ana' twice"):
        Group("g", (*MEMBERS, Member("ana", "writer")))


def test_budget_steps_must_drain_monotonically() -> None:
    """Steps go down in fraction and never up in k."""
    with pytest.raises(GroupConfigError, match=r"budget step 1 .* must have a lower fraction"):
        DispatchConfig(k=3, steps=(BudgetStep(0.5, 2), BudgetStep(0.3, 3)))
    with pytest.raises(GroupConfigError, match=r"budget step 0: k must be an integer in 1..3"):
        DispatchConfig(k=3, steps=(BudgetStep(0.5, 4),))


def test_group_file_errors_name_the_file_group_and_field(tmp_path: Path) -> None:
    """A bad group file names the file, the group and the field."""
    path = tmp_path / "groups.toml"
    path.write_text('[groups.room]\nk = 0\n[[groups.room.members]]\nagent = "a"\nrole = "r"\ndecides = true\n')
    with pytest.raises(GroupFileError, match=r"groups.toml: groups.room: k \(the most responders"):
        load_groups(path)
    path.write_text('[groups.room]\n[[groups.room.members]]\nagent = "a"\nrol = "r"\n')
    with pytest.raises(GroupFileError, match=r"groups.room.members.0.role: Field required"):
        load_groups(path)
    with pytest.raises(GroupFileError, match="no such group file"):
        load_groups(tmp_path / "missing.toml")
