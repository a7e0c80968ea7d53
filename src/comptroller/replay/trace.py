"""Reading normalised JSONL traces (the format of ``data/traces/README.md``).

One JSON object per line, one LLM call each. Required fields: ``run_id``, ``ts``,
``agent``, ``input_tokens``, ``output_tokens``. Optional: ``seq``, ``phase``, ``key_id``
(the API key the call came with, for spend per key), ``model``, ``cache_read_tokens``, ``cache_write_tokens`` (parts of
``input_tokens``, OpenAI convention), and the extras ``x_logged_cost_usd``,
``x_max_output_tokens``, ``x_model_resolved``. Other fields are ignored.

Timestamps are ISO 8601; a naive timestamp (no offset) is taken as UTC. ChatDev's
logs record the operator's local clock with no zone, so absolute times may be off
by the operator's UTC offset; order and durations within a run are exact.

A malformed line raises :class:`TraceError` naming the file, the line and the
field, unless ``skip_invalid`` is set, in which case it is skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = ["TraceError", "TraceRecord", "parse_object", "read_traces"]


class TraceError(ValueError):
    """A trace line is not valid JSON or a field is missing or of the wrong type."""

    def __init__(self, path: str, line: int, field: str | None, problem: str) -> None:
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}" + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {problem} (use --skip-invalid to skip and count such lines)")


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One recorded call.

    Attributes:
        path, line: where it was read (for messages).
        run_id: the multi-agent run (one conversation and task in replay).
        seq: order in the run (1-based; the line number when absent).
        ts: when the response arrived (aware UTC).
        agent, phase: who made the call, and the phase label.
        key_id: the API key the call came with (an id or a hash, never a secret), or None.
        model: the recorded model label, or None.
        model_resolved: ``x_model_resolved``, the API model worked out from evidence.
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens: tokens.
        logged_cost_usd: the cost the source system logged (``x_logged_cost_usd``).
        max_output_tokens: the ``max_tokens`` the source requested (``x_max_output_tokens``).
        attempt: the re-attempt of the run this call belongs to: 0 for the recorded run;
            ``replay --inject-loop`` adds copies 1, 2, ... (see :mod:`comptroller.replay.inject`).
    """

    path: str
    line: int
    run_id: str
    seq: int
    ts: datetime
    agent: str
    phase: str | None
    key_id: str | None
    model: str | None
    model_resolved: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    logged_cost_usd: Decimal | None
    max_output_tokens: int | None
    attempt: int = 0

    @property
    def attempt_id(self) -> str:
        """The run attempt's id: ``run_id``, or ``run_id#k`` for the k-th injected re-attempt."""
        return self.run_id if self.attempt == 0 else f"{self.run_id}#{self.attempt}"


def _str(obj: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ValueError("is required")
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


def _int(obj: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ValueError("is required")
        return None
    if type(value) is not int or value < 0:
        raise ValueError(f"must be a non-negative integer, got {value!r}")
    return value


def _ts(obj: dict[str, Any]) -> datetime:
    value = _str(obj, "ts", required=True)
    assert value is not None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"must be an ISO 8601 timestamp, got {value!r}") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _cost(obj: dict[str, Any]) -> Decimal | None:
    value = obj.get("x_logged_cost_usd")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a number, got {value!r}")
    return Decimal(str(value))


_FIELDS = ("run_id", "ts", "agent", "phase", "key_id", "model", "x_model_resolved", "input_tokens", "output_tokens",
           "cache_read_tokens", "cache_write_tokens", "x_logged_cost_usd", "x_max_output_tokens", "seq")


def _parse_field(obj: dict[str, Any], name: str) -> Any:
    if name == "ts":
        return _ts(obj)
    if name == "x_logged_cost_usd":
        return _cost(obj)
    if name in ("run_id", "agent"):
        return _str(obj, name, required=True)
    if name in ("phase", "key_id", "model", "x_model_resolved"):
        return _str(obj, name, required=False)
    return _int(obj, name, required=name in ("input_tokens", "output_tokens"))


def parse_line(text: str, path: str, line: int) -> TraceRecord:
    """Parse one JSONL line into a :class:`TraceRecord`.

    Raises:
        TraceError: naming file, line and field.
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(path, line, None, f"not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise TraceError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    return parse_object(obj, path, line)


def parse_object(obj: dict[str, Any], path: str, line: int) -> TraceRecord:
    """Validate one normalised record (a decoded JSONL object) into a :class:`TraceRecord`.

    The importers (:mod:`comptroller.replay.importers`) build such objects from other
    formats, so every source passes the same checks.

    Raises:
        TraceError: naming file, line (or row) and field.
    """
    values: dict[str, Any] = {}
    for name in _FIELDS:
        try:
            values[name] = _parse_field(obj, name)
        except ValueError as exc:
            raise TraceError(path, line, name, str(exc)) from None
    cached = (values["cache_read_tokens"] or 0) + (values["cache_write_tokens"] or 0)
    if cached > values["input_tokens"]:
        raise TraceError(path, line, "cache_read_tokens",
                         f"cache tokens ({cached}) exceed input_tokens ({values['input_tokens']}); "
                         "input_tokens must include cached tokens")
    return TraceRecord(
        path=path, line=line, run_id=values["run_id"], seq=values["seq"] if values["seq"] is not None else line,
        ts=values["ts"], agent=values["agent"], phase=values["phase"], key_id=values["key_id"],
        model=values["model"],
        model_resolved=values["x_model_resolved"], input_tokens=values["input_tokens"],
        output_tokens=values["output_tokens"], cache_read_tokens=values["cache_read_tokens"] or 0,
        cache_write_tokens=values["cache_write_tokens"] or 0, logged_cost_usd=values["x_logged_cost_usd"],
        max_output_tokens=values["x_max_output_tokens"],
    )


def read_traces(paths: Iterable[str | Path], *, skip_invalid: bool = False) -> tuple[list[TraceRecord], int]:
    """Read every record of every file, sorted by (ts, run_id, seq) for replay in time order.

    Args:
        paths: JSONL files.
        skip_invalid: skip malformed lines (and count them) instead of raising.

    Returns:
        ``(records, skipped)``.

    Raises:
        TraceError: on the first malformed line unless ``skip_invalid``.
        FileNotFoundError: for a missing file.
    """
    records: list[TraceRecord] = []
    skipped = 0
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    records.append(parse_line(text, str(path), number))
                except TraceError:
                    if not skip_invalid:
                        raise
                    skipped += 1
    records.sort(key=lambda r: (r.ts, r.run_id, r.seq))
    return records, skipped
