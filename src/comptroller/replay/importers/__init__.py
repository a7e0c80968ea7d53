"""Importers: other systems' LLM-call logs -> the normalised JSONL records of ``data/traces/README.md``.

One module per source format, each built from that format's documentation (cited in its
docstring): :mod:`.otel` (OpenTelemetry GenAI spans, OTLP JSON), :mod:`.litellm`
(``LiteLLM_SpendLogs``), :mod:`.langfuse` (observations), :mod:`.helicone` (request exports).
Each turns one source row into zero or more normalised objects (plain dicts in the JSONL
format), which are validated by the same :func:`~comptroller.replay.trace.parse_object` as
our own files; :func:`load` returns :class:`TraceRecord` s for replay and :func:`convert` the
objects for ``comptroller traces convert``.

``seq`` is assigned per run in time order (records that carry one keep it). ``auto`` recognises a file's format from its
first row (:func:`detect`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType

from comptroller.replay.importers import helicone, langfuse, litellm, otel
from comptroller.replay.importers.rows import Row, RowError, read_rows
from comptroller.replay.trace import TraceError, TraceRecord, parse_object, read_traces

__all__ = ["FORMATS", "UnknownFormatError", "convert", "detect", "load", "write_jsonl"]

_MODULES: dict[str, ModuleType] = {"otel": otel, "litellm": litellm, "langfuse": langfuse, "helicone": helicone}
FORMATS = ("auto", "jsonl", *_MODULES)
"""Values of ``--format``."""


class UnknownFormatError(ValueError):
    """A file's format is not recognised (``--format auto``) or not supported."""


def _is_jsonl(row: Row) -> bool:
    return "run_id" in row and "input_tokens" in row


def detect(path: str | Path) -> str:
    """The format of a file, from its first row: ``jsonl``, ``otel``, ``litellm``, ``langfuse`` or ``helicone``.

    Raises:
        UnknownFormatError: naming the file and the first row's fields.
    """
    for _, row in read_rows(path):
        if _is_jsonl(row):
            return "jsonl"
        for name, module in _MODULES.items():
            if module.looks_like(row):
                return name
        raise UnknownFormatError(f"{path}: cannot tell the trace format from its first row (fields: "
                                 f"{', '.join(sorted(row)[:12])}); pass --format {'|'.join(FORMATS[1:])}")
    raise UnknownFormatError(f"{path}: the file holds no rows")


def _objects(path: str | Path, fmt: str, skip_invalid: bool) -> tuple[list[tuple[int, Row]], int]:
    calls: Callable[[Row], list[Row]] = _MODULES[fmt].calls
    out: list[tuple[int, Row]] = []
    skipped = 0
    for number, row in read_rows(path):
        try:
            out += [(number, obj) for obj in calls(row)]
        except RowError as exc:
            if not skip_invalid:
                raise TraceError(str(path), number, exc.field, f"{exc} ({fmt} format)") from None
            skipped += 1
    return out, skipped


def _with_seq(objects: list[tuple[str, int, Row]]) -> list[tuple[str, int, Row]]:
    by_run: dict[str, list[tuple[str, int, Row]]] = defaultdict(list)
    for item in objects:
        by_run[str(item[2].get("run_id"))].append(item)
    for items in by_run.values():
        items.sort(key=lambda item: (str(item[2].get("ts")), item[1]))
        taken = {obj["seq"] for _, _, obj in items if isinstance(obj.get("seq"), int)}
        seq = max(taken, default=0)
        for _, _, obj in items:
            if not isinstance(obj.get("seq"), int):  # our JSONL keeps its own seq
                seq += 1
                obj["seq"] = seq
    return sorted(objects, key=lambda item: (str(item[2].get("ts")), str(item[2].get("run_id")), item[2]["seq"]))


def convert(paths: Iterable[str | Path], fmt: str = "auto", *,
            skip_invalid: bool = False) -> tuple[list[tuple[str, int, Row]], int]:
    """Every call of every file as a normalised object, with where it came from.

    Args:
        paths: source files.
        fmt: one of :data:`FORMATS` (``auto``: per file, :func:`detect`).
        skip_invalid: count and skip rows that cannot become a call, instead of raising.

    Returns:
        ``([(path, line, object), ...] in time order, skipped rows)``.

    Raises:
        TraceError: naming the file, the row and the source field.
        UnknownFormatError: for an unrecognised file or format.
    """
    if fmt not in FORMATS:
        raise UnknownFormatError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    objects: list[tuple[str, int, Row]] = []
    skipped = 0
    for path in paths:
        kind = detect(path) if fmt == "auto" else fmt
        if kind == "jsonl":
            objects += [(str(path), n, row) for n, row in read_rows(path)]
            continue
        found, bad = _objects(path, kind, skip_invalid)
        objects += [(str(path), n, obj) for n, obj in found]
        skipped += bad
    return _with_seq(objects), skipped


def load(paths: Sequence[str | Path], fmt: str = "auto", *,
         skip_invalid: bool = False) -> tuple[list[TraceRecord], int]:
    """Records of every file, in time order, for replay (see :func:`convert` for the arguments).

    Our own JSONL goes through :func:`~comptroller.replay.trace.read_traces` unchanged.

    Raises:
        TraceError, UnknownFormatError: as :func:`convert`.
    """
    if fmt == "jsonl" or (fmt == "auto" and all(detect(p) == "jsonl" for p in paths)):
        return read_traces(paths, skip_invalid=skip_invalid)
    objects, skipped = convert(paths, fmt, skip_invalid=skip_invalid)
    records: list[TraceRecord] = []
    for path, line, obj in objects:
        try:
            records.append(parse_object(obj, path, line))
        except TraceError:
            if not skip_invalid:
                raise
            skipped += 1
    records.sort(key=lambda r: (r.ts, r.run_id, r.seq))
    return records, skipped


def write_jsonl(objects: Iterable[tuple[str, int, Row]], out: str | Path) -> int:
    """Write normalised objects as JSONL (one call per line); returns the number written."""
    count = 0
    with open(out, "w", encoding="utf-8") as handle:
        for _, _, obj in objects:
            handle.write(json.dumps(obj, separators=(",", ":")) + "\n")
            count += 1
    return count
