"""Which scopes have a spend-rate breaker, and how each is configured (DESIGN.md rule 5).

By default every agent and every conversation (the group) has a breaker with the
:class:`~comptroller.domain.breaker.BreakerConfig` defaults (KinthAI's numbers).
A level default can be replaced, and one scope can get its own config or have its
breaker switched off. Asking for a breaker no level and no override configures
is an :class:`~comptroller.domain.defenses.errors.UnknownScopeError`, so an admin
resetting a mistyped scope is told, not silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from comptroller.domain.breaker import BreakerConfig
from comptroller.domain.defenses._checks import parse_level
from comptroller.domain.defenses.errors import DefenseConfigError, UnknownScopeError
from comptroller.domain.scopes import Level

__all__ = ["DEFAULT_BREAKER_LEVELS", "BreakerPolicy"]

DEFAULT_BREAKER_LEVELS: tuple[Level, ...] = (Level.AGENT, Level.CONVERSATION)


def _default_levels() -> dict[Level, BreakerConfig]:
    return {level: BreakerConfig() for level in DEFAULT_BREAKER_LEVELS}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Which scopes have a breaker, and how each is configured.

    Attributes:
        levels: level -> the config of every scope of that level (default: agent and
            conversation, with :class:`BreakerConfig` defaults).
        overrides: ``(level, scope key)`` -> the config of that one scope, or None to
            switch its breaker off.

    Raises:
        DefenseConfigError: on an unknown level, a scope key that is empty or ``*``,
            or a value that is not a BreakerConfig.
    """

    levels: Mapping[Level, BreakerConfig] = field(default_factory=_default_levels)
    overrides: Mapping[tuple[Level, str], BreakerConfig | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        levels = {parse_level("breaker", level): _require_config(config, str(level))
                  for level, config in self.levels.items()}
        overrides: dict[tuple[Level, str], BreakerConfig | None] = {}
        for (level, scope), config in self.overrides.items():
            if not isinstance(scope, str) or not scope.strip() or scope == "*":
                raise DefenseConfigError(
                    f"breaker override scope must be one scope key (not empty, not '*'), got {scope!r}; "
                    "set a level default in `levels` instead")
            checked = None if config is None else _require_config(config, scope)
            overrides[(parse_level("breaker", level), scope)] = checked
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "overrides", overrides)

    def config_for(self, level: Level, scope: str) -> BreakerConfig | None:
        """The config of one breaker; None if its override switches it off.

        Raises:
            UnknownScopeError: if neither the level nor the scope has a breaker configured.
        """
        key = (parse_level("breaker", level), scope)
        if key in self.overrides:
            return self.overrides[key]
        if key[0] in self.levels:
            return self.levels[key[0]]
        configured = ", ".join(self.levels) or "none"
        raise UnknownScopeError(
            f"no breaker for {level} {scope!r}: breakers are configured for levels {configured} and "
            f"{len(self.overrides)} scope override(s); check the scope key or add an override")

    def breakers_for(self, scopes: Sequence[tuple[Level, str]]) -> list[tuple[Level, str, BreakerConfig]]:
        """The breakers that apply to a call, broadest level first.

        Args:
            scopes: the call's ``(level, scope key)`` pairs (:meth:`Attribution.scopes`).
        """
        found: list[tuple[Level, str, BreakerConfig]] = []
        for level, scope in scopes:
            key = (level, scope)
            config = self.overrides[key] if key in self.overrides else self.levels.get(level)
            if config is not None:
                found.append((level, scope, config))
        return found


def _require_config(value: object, where: str) -> BreakerConfig:
    if not isinstance(value, BreakerConfig):
        raise DefenseConfigError(f"breaker config for {where} must be a BreakerConfig, got {value!r}")
    return value
