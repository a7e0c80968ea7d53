"""Typed reads and writes of flat JSON records, for states a store persists (private).

A record is a ``dict[str, JsonScalar]``: datetimes as ISO-8601 strings with their
offset, enums as their values. Reading checks every type and raises ValueError
naming the key, so a corrupt row is reported, never half-loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from comptroller.domain.defenses.verdict import JsonScalar

__all__ = ["get_bool", "get_int", "get_opt_dt", "get_opt_int", "get_opt_str", "get_str", "iso"]

Record = Mapping[str, JsonScalar]


def iso(value: datetime | None) -> str | None:
    """ISO-8601 text of an aware datetime, or None."""
    return None if value is None else value.isoformat()


def _get(record: Record, key: str) -> JsonScalar:
    if key not in record:
        raise ValueError(f"state record has no {key!r}; it was written by another version or is corrupt")
    return record[key]


def _bad(key: str, want: str, value: object) -> ValueError:
    return ValueError(f"state record field {key!r} must be {want}, got {value!r}")


def get_str(record: Record, key: str) -> str:
    """A required string."""
    value = _get(record, key)
    if not isinstance(value, str):
        raise _bad(key, "a string", value)
    return value


def get_opt_str(record: Record, key: str) -> str | None:
    """A string or None."""
    value = _get(record, key)
    if value is not None and not isinstance(value, str):
        raise _bad(key, "a string or null", value)
    return value


def get_int(record: Record, key: str) -> int:
    """A required integer (not a bool)."""
    value = _get(record, key)
    if type(value) is not int:
        raise _bad(key, "an integer", value)
    return value


def get_opt_int(record: Record, key: str) -> int | None:
    """An integer or None."""
    value = _get(record, key)
    if value is not None and type(value) is not int:
        raise _bad(key, "an integer or null", value)
    return value


def get_bool(record: Record, key: str) -> bool:
    """A required bool."""
    value = _get(record, key)
    if not isinstance(value, bool):
        raise _bad(key, "true or false", value)
    return value


def get_opt_dt(record: Record, key: str) -> datetime | None:
    """An aware datetime from ISO-8601 text, or None."""
    text = get_opt_str(record, key)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(key, "an ISO-8601 datetime", text) from None
    if value.tzinfo is None:
        raise _bad(key, "an aware ISO-8601 datetime (with offset)", text)
    return value
