"""Validation helpers shared by the defense configs (private).

Every message names the owner and field, the value seen, the allowed range and
what to do, so a bad configuration file is fixed in one reading.
"""

from __future__ import annotations

import math
from datetime import datetime

from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.scopes import LEVELS, Level

__all__ = ["parse_level", "require_aware", "require_int", "require_seconds", "require_text"]


def require_int(owner: str, name: str, value: object, *, low: int, high: int | None = None,
                unit: str = "") -> int:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]``; else raise DefenseConfigError."""
    if type(value) is not int or value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise DefenseConfigError(
            f"{owner}.{name} must be an integer >= {low}{upper}{unit}, got {value!r}; "
            f"set {name} to a value in that range"
        )
    return value


def require_seconds(owner: str, name: str, value: object, *, high: float) -> float:
    """Return ``value`` as float seconds if it is a finite number in ``(0, high]``; else raise."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or not 0 < value <= high):
        raise DefenseConfigError(
            f"{owner}.{name} must be a number of seconds > 0 and <= {high:g}, got {value!r}; "
            f"set {name} to a positive duration"
        )
    return float(value)


def require_text(owner: str, name: str, value: object) -> str:
    """Return ``value`` if it is a non-empty string; else raise DefenseConfigError."""
    if not isinstance(value, str) or not value.strip():
        raise DefenseConfigError(f"{owner}.{name} must be a non-empty string, got {value!r}")
    return value


def require_aware(name: str, value: datetime) -> datetime:
    """Return ``value`` if it is an aware datetime; else raise ValueError (time is always UTC-aware)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be an aware datetime (UTC), got {value!r}")
    return value


def parse_level(owner: str, value: object) -> Level:
    """The :class:`Level` named by ``value``; else raise DefenseConfigError listing the levels."""
    try:
        return Level(str(value))
    except ValueError:
        raise DefenseConfigError(f"unknown {owner} level {value!r}; use one of: {', '.join(LEVELS)}") from None
