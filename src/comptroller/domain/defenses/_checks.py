"""Validation helpers shared by the defense configs (private).

Every message names the owner and field, the value seen, the allowed range and
what to do, so a bad configuration file is fixed in one reading.
"""

from __future__ import annotations

import math
from datetime import datetime

from comptroller.domain.defenses.errors import DefenseConfigError

__all__ = ["require_aware", "require_int", "require_seconds", "require_text"]


def require_int(owner: str, name: str, value: object, *, low: int, high: int | None = None,
                unit: str = "") -> int:
    """Return ``value`` if it is an int (not a bool) in ``[low, high]``; else raise DefenseConfigError."""
    in_range = type(value) is int and value >= low and (high is None or value <= high)
    if not in_range:
        upper = "" if high is None else f" and <= {high}"
        raise DefenseConfigError(
            f"{owner}.{name} must be an integer >= {low}{upper}{unit}, got {value!r}; "
            f"set {name} to a value in that range"
        )
    assert isinstance(value, int)
    return value


def require_seconds(owner: str, name: str, value: object, *, high: float) -> float:
    """Return ``value`` as float seconds if it is a finite number in ``(0, high]``; else raise."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 < float(value) <= high:  # type: ignore[arg-type]  # ok guarantees a real number
        raise DefenseConfigError(
            f"{owner}.{name} must be a number of seconds > 0 and <= {high:g}, got {value!r}; "
            f"set {name} to a positive duration"
        )
    return float(value)  # type: ignore[arg-type]  # checked above


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
