"""Group definitions from TOML: ``[groups.NAME]`` tables, validated once into domain groups.

A group file (it may hold other tables too; only ``groups`` is read)::

    [groups.review]
    conversation = "review-17"     # the conversation its calls and its budget use (default: the name)
    mode = "strict"                # strict: only dispatched members may call in the conversation
                                   # (refused at admit with not_dispatched); default "advisory"
    k = 3                          # most responders per message
    cooldown_messages = 2          # a member who wrote one of the last 2 messages waits
    cooldown_s = 0                 # ... or within this many seconds (0: off)
    relevance_min = 0.0            # a chat message must score above this (BM25) against a member
    mentions_only_below = 0.10     # below 10 % of the group budget: mentions and the decider only
    steps = [[0.5, 3], [0.25, 2], [0.1, 1]]   # (remaining fraction, k) as the budget drains
    wrap_up = true                 # ask the decider to close when the budget is spent
    escalate_loops = true          # ask the decider when a loop is cut off

    [groups.review.loops]
    ping_pong_exchanges_max = 6

    [[groups.review.members]]
    agent = "alice"
    role = "writer"
    description = "Python backend, HTTP APIs, databases"
    tenant = "acme"                # the tenant its calls are attributed to (default "default")

    [[groups.review.members]]
    agent = "judy"
    role = "judge"
    description = "final decision on what ships"
    decides = true

    [groups.review.roles.critic]
    answers = ["draft"]            # chat | draft | verdict
    after = []                     # roles that answer before this one
    isolated = true                # sees drafts and verdicts, not the room's reactions
    sees = ["draft", "verdict"]

Errors name the file, the group and the field, and say what to write instead.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comptroller.domain.defenses.dispatch_rule import GroupMode
from comptroller.domain.dispatch import (
    BudgetStep,
    DispatchConfig,
    Dispatcher,
    Flag,
    Group,
    GroupError,
    Kind,
    LoopConfig,
    Member,
    RoleRule,
)

__all__ = ["GroupDefinition", "GroupFileError", "load_groups", "parse_groups"]

KindName = Literal["chat", "draft", "verdict"]


class GroupFileError(ValueError):
    """A group file is unreadable or invalid; the message names the file, the group and the field."""


class _Loops(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ping_pong_exchanges_max: int = 6
    deference_run: int = 2
    deference_words_max: int = 40
    near_duplicate_min: float = 0.9
    near_duplicate_window: int = 8
    near_duplicate_words_min: int = 5


class _Member(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: str
    role: str
    description: str = ""
    decides: bool = False
    tenant: str = "default"


class _Role(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answers: list[KindName] = Field(default_factory=lambda: list[KindName](["chat"]))
    after: list[str] = Field(default_factory=list)
    isolated: bool = False
    sees: list[KindName] = Field(default_factory=lambda: list[KindName](["draft", "verdict"]))


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation: str | None = None
    mode: GroupMode = GroupMode.ADVISORY
    k: int = 3
    cooldown_messages: int = 2
    cooldown_s: float = 0.0
    relevance_min: float = 0.0
    mentions_only_below: float = 0.10
    steps: list[tuple[float, int]] | None = None
    wrap_up: bool = True
    escalate_loops: bool = True
    loops: _Loops = Field(default_factory=_Loops)
    members: list[_Member]
    roles: dict[str, _Role] = Field(default_factory=dict)


class GroupDefinition:
    """A validated group: the domain group, its dispatch settings, and each member's tenant.

    Attributes:
        group: the :class:`~comptroller.domain.dispatch.Group`.
        config: its :class:`~comptroller.domain.dispatch.DispatchConfig`.
        tenants: agent id -> the tenant its calls are attributed to.
        dispatcher: the group's :class:`~comptroller.domain.dispatch.Dispatcher` (BM25 index built once).
        mode: ``strict`` (only dispatched members may call in the conversation, enforced at admit by
            :mod:`comptroller.domain.defenses.dispatch_rule`) or ``advisory`` (the default, so groups
            written before strict mode keep working: the decision is advice).
        table: the validated ``[groups.NAME]`` table as JSON data (what the ledger keeps of a group
            created through the admin API), or None for a group built in code.

    Raises:
        GroupError: from the domain (no decider, cycles, k < 1...).
    """

    def __init__(self, group: Group, config: DispatchConfig, tenants: dict[str, str] | None = None, *,
                 mode: GroupMode = GroupMode.ADVISORY, table: dict[str, Any] | None = None) -> None:
        self.group = group
        self.config = config
        self.mode = GroupMode(mode)
        self.table = table
        self.tenants = {m.agent: (tenants or {}).get(m.agent, "default") for m in group.members}
        self.dispatcher = Dispatcher(group, config)

    @property
    def id(self) -> str:
        """The group id."""
        return self.group.id

    @classmethod
    def from_mapping(cls, name: str, data: dict[str, Any]) -> GroupDefinition:
        """Validate one ``[groups.NAME]`` table.

        Raises:
            ValidationError: on a missing or mistyped field.
            GroupError: on a rule the domain refuses.
        """
        raw = _Group.model_validate(data)
        members = tuple(Member(agent=m.agent, role=m.role, description=m.description,
                               flags=frozenset({Flag.DECIDES}) if m.decides else frozenset()) for m in raw.members)
        rules = {role: RoleRule(role=role, answers=frozenset(Kind(k) for k in r.answers), after=tuple(r.after),
                                isolated=r.isolated, sees=frozenset(Kind(k) for k in r.sees))
                 for role, r in raw.roles.items()}
        group = Group(id=name, members=members, rules=rules, conversation=raw.conversation or name)
        steps = None if raw.steps is None else tuple(BudgetStep(f, k) for f, k in raw.steps)
        config = DispatchConfig(k=raw.k, steps=steps, mentions_only_below=raw.mentions_only_below,
                                cooldown_messages=raw.cooldown_messages, cooldown_s=raw.cooldown_s,
                                relevance_min=raw.relevance_min, loops=LoopConfig(**raw.loops.model_dump()),
                                wrap_up=raw.wrap_up, escalate_loops=raw.escalate_loops)
        return cls(group, config, {m.agent: m.tenant for m in raw.members}, mode=raw.mode,
                   table=raw.model_dump(mode="json"))


def parse_groups(data: dict[str, Any], source: str = "<groups>") -> dict[str, GroupDefinition]:
    """Every ``groups.NAME`` table of a parsed TOML document, by name.

    Raises:
        GroupFileError: naming ``source``, the group and the field.
    """
    tables = data.get("groups")
    if not isinstance(tables, dict) or not tables:
        raise GroupFileError(f"{source}: no [groups.NAME] table; define at least one group")
    out: dict[str, GroupDefinition] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise GroupFileError(f"{source}: groups.{name} must be a table ([groups.{name}])")
        try:
            out[name] = GroupDefinition.from_mapping(name, table)
        except ValidationError as exc:
            problems = "; ".join(f"groups.{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise GroupFileError(f"{source}: {problems}") from None
        except GroupError as exc:
            raise GroupFileError(f"{source}: groups.{name}: {exc}") from None
    return out


def load_groups(path: str | Path) -> dict[str, GroupDefinition]:
    """Read and validate the groups of a TOML file.

    Raises:
        GroupFileError: on a missing file, bad TOML, or an invalid group.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GroupFileError(f"{path}: no such group file") from None
    except tomllib.TOMLDecodeError as exc:
        raise GroupFileError(f"{path}: not valid TOML: {exc}") from None
    return parse_groups(data, str(path))
