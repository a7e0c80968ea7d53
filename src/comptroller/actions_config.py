"""The ``[actions.PLATFORM]`` and ``[actions.PLATFORM.KIND]`` policy sections: the action guard's rules.

Example (the limits of "Running 6 AI Agents in Production")::

    [actions.writeas]
    count_max = 1                 # one post per 12 hours
    window_s = 43200
    similar_max = 0.85            # refuse above this similarity to...
    similar_last_n = 30           # ...the last 30 on the platform and by the agent
    verify_url = "{url}"          # GET the outcome's URL: 200 and the marker, or it stays unverified
    verify_marker = "{text40}"    # the first 40 characters of the text (default)

    [actions.tumblr]
    count_max = 3                 # 3 a day...
    window_s = 86400
    gap_s = 14400                 # ...4 hours apart
    length_min = 40
    length_max = 2000
    prohibited = ["guaranteed", "free money"]
    required = { call_to_action = "(?i)\\b(read|subscribe|follow)\\b" }
    score_field = "score"         # or scorer = "package.module:function" (Action -> float)
    score_min = 0.75
    approval = true               # hold until `comptroller action approve` (expires after approval_ttl_s)
    approval_ttl_s = 86400

    [actions.tumblr.reply]        # a kind: inherits the platform's fields, overrides what it sets;
    count_max = 10                # its own rate counts only this kind (the platform's still applies)

``[actions."*"]`` applies to platforms not named. An action on a platform with no section
(and no ``"*"``) is refused with ``unknown_platform``: no policy never means no limit.
Verification needs ``verify_url``, ``verifier = "module:function"`` or an explicit
``trust_outcome = true``; without one an action stays ``unverified``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comptroller.domain.actions.rules import ActionRules, RateLimit, Verification

__all__ = ["ActionPolicy", "ActionsConfigError", "TaskSettings", "parse_actions", "parse_tasks"]


class ActionsConfigError(ValueError):
    """An ``[actions...]`` section is invalid; the message names the section and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count_max: int | None = Field(default=None, ge=1)
    window_s: float | None = Field(default=None, gt=0, le=366 * 86_400)
    gap_s: float | None = Field(default=None, ge=0, le=366 * 86_400)
    similar_max: float | None = Field(default=None, gt=0, le=1)
    similar_last_n: int | None = Field(default=None, ge=1, le=1000)
    length_min: int | None = Field(default=None, ge=0)
    length_max: int | None = Field(default=None, ge=1)
    prohibited: list[str] | None = None
    required: dict[str, str] | None = None
    score_field: str | None = None
    scorer: str | None = None
    score_min: float | None = None
    approval: bool | None = None
    approval_ttl_s: float | None = Field(default=None, gt=0, le=30 * 86_400)
    verify_url: str | None = None
    verify_marker: str | None = None
    verifier: str | None = None
    trust_outcome: bool | None = None
    verify_attempts: int | None = Field(default=None, ge=1, le=20)
    verify_backoff_s_start: float | None = Field(default=None, gt=0)
    verify_backoff_s_max: float | None = Field(default=None, gt=0)


class ActionPolicy:
    """The validated ``[actions]`` sections: the rules for each (platform, kind)."""

    def __init__(self, platforms: Mapping[str, tuple[_Section, Mapping[str, _Section]]], source: str) -> None:
        self._platforms = dict(platforms)
        self.source = source

    @property
    def platforms(self) -> list[str]:
        """The platforms named (``*`` included)."""
        return sorted(self._platforms)

    def rules_for(self, platform: str, kind: str) -> ActionRules | None:
        """The rules of ``platform`` and ``kind`` (``[actions."*"]`` for an unnamed platform), or None."""
        entry = self._platforms.get(platform) or self._platforms.get("*")
        if entry is None:
            return None
        base, kinds = entry
        sub = kinds.get(kind)
        return _rules(platform, kind if sub is not None else None, base, sub, self.source)

    def keep_s(self) -> float:
        """The longest rate look-back over every section, seconds (what the history keeps)."""
        spans = [0.0]
        for base, kinds in self._platforms.values():
            for s in (base, *kinds.values()):
                spans.append(max(s.window_s or 86_400.0, s.gap_s or 0.0) if s.count_max or s.gap_s else 0.0)
        return max(spans)

    def keep_n(self) -> int:
        """The longest near-duplicate look-back over every section (entries)."""
        return max([30, *(s.similar_last_n or 0 for base, kinds in self._platforms.values()
                          for s in (base, *kinds.values()))])


def parse_actions(data: Mapping[str, Any], source: str = "policy") -> ActionPolicy:
    """Validate the ``[actions]`` table of a policy file.

    Raises:
        ActionsConfigError: naming ``actions.PLATFORM[.KIND].field`` and what to write.
    """
    platforms: dict[str, tuple[_Section, dict[str, _Section]]] = {}
    for platform, table in data.items():
        if not isinstance(table, dict):
            raise ActionsConfigError(f"{source}: actions.{platform} must be a table ([actions.{platform}])")
        own = {k: v for k, v in table.items() if not isinstance(v, dict) or k == "required"}
        base = _section(own, f"actions.{platform}", source)
        kinds = {k: _section(v, f"actions.{platform}.{k}", source)
                 for k, v in table.items() if isinstance(v, dict) and k != "required"}
        platforms[platform] = (base, kinds)
    policy = ActionPolicy(platforms, source)
    for platform, (_, kinds) in platforms.items():
        for kind in ("", *kinds):
            policy.rules_for(platform, kind)  # resolves callables and regexes now, not at the first action
    return policy


def _section(table: Mapping[str, Any], where: str, source: str) -> _Section:
    try:
        section = _Section.model_validate(table)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ActionsConfigError(f"{source}: {where}.{field}: {first['msg']}") from None
    for name, pattern in (section.required or {}).items():
        try:
            re.compile(pattern)
        except re.error as err:
            raise ActionsConfigError(f"{source}: {where}.required.{name}: not a regex ({err})") from None
    if section.score_min is not None and section.score_field is None and section.scorer is None:
        raise ActionsConfigError(f"{source}: {where}.score_min needs score_field = \"...\" or scorer = "
                                 "\"module:function\" to read the score from")
    return section


def _pick(name: str, base: _Section, sub: _Section | None) -> Any:
    value = getattr(sub, name) if sub is not None else None
    return getattr(base, name) if value is None else value


def _rules(platform: str, kind: str | None, base: _Section, sub: _Section | None, source: str) -> ActionRules:
    rates = [_rate(base, None)]
    if sub is not None and (sub.count_max is not None or sub.gap_s is not None):
        rates.append(_rate(sub, kind))
    where = f"actions.{platform}{'' if kind is None else '.' + kind}"
    scorer, verifier = _pick("scorer", base, sub), _pick("verifier", base, sub)
    ttl = _pick("approval_ttl_s", base, sub)
    start = _pick("verify_backoff_s_start", base, sub) or 30.0
    verification = Verification(
        url=_pick("verify_url", base, sub), marker=_pick("verify_marker", base, sub) or "{text40}",
        verifier=None if verifier is None else _load(verifier, f"{where}.verifier", source),
        trust_outcome=bool(_pick("trust_outcome", base, sub)), attempts=_pick("verify_attempts", base, sub) or 3,
        backoff_s_start=start, backoff_s_max=max(start, _pick("verify_backoff_s_max", base, sub) or 900.0))
    return ActionRules(
        platform=platform, kind=kind, rates=tuple(r for r in rates if r.count_max is not None or r.gap_s > 0),
        similar_max=_pick("similar_max", base, sub), similar_last_n=_pick("similar_last_n", base, sub) or 30,
        length_min=_pick("length_min", base, sub) or 0, length_max=_pick("length_max", base, sub),
        prohibited=tuple(_pick("prohibited", base, sub) or ()),
        required=tuple(sorted((_pick("required", base, sub) or {}).items())),
        score_field=_pick("score_field", base, sub),
        scorer=None if scorer is None else _load(scorer, f"{where}.scorer", source),
        score_min=_pick("score_min", base, sub), approval=bool(_pick("approval", base, sub)),
        approval_ttl_s=86_400.0 if ttl is None else ttl, verification=verification)


def _rate(section: _Section, kind: str | None) -> RateLimit:
    return RateLimit(count_max=section.count_max, window_s=section.window_s or 86_400.0, gap_s=section.gap_s or 0.0,
                     kind=kind)


def _load(target: str, where: str, source: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    try:
        found = getattr(importlib.import_module(module), name) if name else None
    except (ImportError, AttributeError) as exc:
        raise ActionsConfigError(f"{source}: {where}: cannot load {target!r} ({exc}); write "
                                 "\"package.module:function\"") from None
    if not callable(found):
        raise ActionsConfigError(f"{source}: {where}: {target!r} is not a callable; write \"package.module:function\"")
    loaded: Callable[..., Any] = found
    return loaded


class TaskSettings(BaseModel):
    """The ``[tasks]`` section::

        [tasks]
        stale_s = 3600                # a task in progress with no heartbeat for this long is stale
        [tasks.chain]                 # who may assign work to whom (direct reports)
        lead = ["writer", "publisher"]
        writer = ["researcher"]
    """

    model_config = ConfigDict(extra="forbid")
    stale_s: float = Field(default=3600.0, gt=0, le=30 * 86_400)
    chain: dict[str, list[str]] = Field(default_factory=dict)


def parse_tasks(data: Mapping[str, Any], source: str = "policy") -> TaskSettings:
    """Validate the ``[tasks]`` table.

    Raises:
        ActionsConfigError: naming ``tasks.field`` and what is wrong.
    """
    try:
        return TaskSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ActionsConfigError(f"{source}: tasks.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
