"""What every importer shares: reading rows from JSON, JSONL or CSV, and the token conventions.

A source export is read as a list of rows (dicts), whatever its container:

* a JSON array of objects, or a JSON object holding one under ``data`` (the
  paginated shape of Langfuse's and Helicone's APIs);
* JSON Lines, one object per line;
* CSV with a header row (a cell holding a JSON object or array, such as LiteLLM's
  ``metadata`` or Helicone's ``properties``, is decoded by the importer that needs it).

**Token conventions.** Our records count every input token in ``input_tokens``,
cached ones included (the OpenAI and OpenTelemetry convention; OpenTelemetry GenAI
semantic conventions: ``gen_ai.usage.cache_read.input_tokens`` "SHOULD be included in
``gen_ai.usage.input_tokens``"). Anthropic's Messages API reports ``input_tokens``
*without* its cache reads and writes ("Prompt caching", docs.anthropic.com), so
:func:`input_tokens_total` adds them back for a source that follows Anthropic's rule.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

__all__ = ["Row", "RowError", "as_int", "as_json", "as_str", "as_usd", "first", "input_tokens_total", "iso_utc",
           "read_rows", "run_id"]

Row = dict[str, Any]


class RowError(ValueError):
    """One source row cannot become a call: ``field`` names the source field at fault."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(problem)


def read_rows(path: str | Path) -> Iterator[tuple[int, Row]]:
    """``(line or row number, row)`` for every object of a JSON, JSONL or CSV export.

    The container is recognised from the content: ``[`` or ``{`` opening a whole
    JSON document, else JSON Lines when the first line is an object, else CSV.

    Raises:
        ValueError: when the file is none of these (naming the file).
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None  # JSON Lines: several objects, one per line
        if isinstance(doc, list):
            yield from ((i, r) for i, r in enumerate(doc, start=1) if isinstance(r, dict))
            return
        if isinstance(doc, dict):
            data = doc.get("data")
            rows: list[Any] = data if isinstance(data, list) else [doc]
            yield from ((i, r) for i, r in enumerate(rows, start=1) if isinstance(r, dict))
            return
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                if isinstance(obj, dict):
                    yield number, obj
        return
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or len(reader.fieldnames) < 2:
        raise ValueError(f"{path}: neither JSON, JSON Lines nor CSV with a header row")
    for number, row in enumerate(reader, start=2):
        yield number, {k: (v if v != "" else None) for k, v in row.items() if k is not None}


def as_json(value: Any, field: str) -> Any:
    """A nested JSON value, decoding it when a CSV cell holds it as text (None stays None)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise RowError(field, f"must hold JSON, got {value[:60]!r}") from None
    return value


def as_int(value: Any, field: str) -> int | None:
    """A non-negative token count from a number or numeric text, or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RowError(field, f"must be a non-negative integer, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise RowError(field, f"must be a non-negative integer, got {value!r}") from None
    if number < 0 or number != number.to_integral_value():
        raise RowError(field, f"must be a non-negative integer, got {value!r}")
    return int(number)


def as_str(value: Any) -> str | None:
    """A non-empty string, or None."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def as_usd(value: Any, field: str) -> str | None:
    """A logged cost as an exact decimal string (None when absent)."""
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise RowError(field, f"must be a number of USD, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise RowError(field, f"must be a non-negative number of USD, got {value!r}")
    return str(amount)


def iso_utc(value: Any, field: str) -> str:
    """An ISO-8601 UTC timestamp from ISO text (``Z`` or an offset; naive = UTC) or epoch nanoseconds."""
    if value is None:
        raise RowError(field, "is required")
    if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        return datetime.fromtimestamp(int(value) / 1e9, tz=UTC).isoformat()
    try:
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise RowError(field, f"must be an ISO 8601 timestamp, got {value!r}") from None
    return (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)).isoformat()


def input_tokens_total(input_tokens: int, cache_read: int, cache_write: int, *, excludes_cache: bool) -> int:
    """All input tokens, cached ones included (our convention).

    Args:
        input_tokens: the source's input count.
        cache_read, cache_write: its cache-read and cache-write counts.
        excludes_cache: the source follows Anthropic's rule (input excludes cache tokens).
            A count smaller than its own cache tokens cannot include them, so it is
            treated as exclusive whatever the flag says.
    """
    if excludes_cache or input_tokens < cache_read + cache_write:
        return input_tokens + cache_read + cache_write
    return input_tokens


def run_id(tenant: str | None, conversation: str) -> str:
    """``tenant/conversation``: replay takes the tenant from before the first ``/`` (``/`` in it becomes ``_``)."""
    return f"{(tenant or 'default').replace('/', '_')}/{conversation}"


def first(row: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` present (not None) in ``row``."""
    for name in names:
        if row.get(name) is not None:
            return row[name]
    return None
