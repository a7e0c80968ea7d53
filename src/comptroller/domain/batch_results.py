"""A finished batch's results, matched to its submitted custom_ids: settle and release actions.

Both providers answer one result per ``custom_id``: OpenAI in an output file and an error
file (API reference, "Batch": "The output file ... error file"), Anthropic in a results JSONL
of ``{"custom_id", "result": {"type": "succeeded" | "errored" | "canceled" | "expired"}}``
(docs "Batch processing: results"). :func:`reconcile` decides, per ``custom_id``:

==========================================  ================================================
returned                                    action
==========================================  ================================================
succeeded, usage read                       settle that usage
succeeded, usage missing or malformed       settle the line's bound (the provider billed it)
returned more than once                     settle the sum of the successes; reported as
                                            duplicate
failed, errored, expired, cancelled         release (the provider bills nothing for them)
not returned, batch completed               settle the bound (the outcome is unknown:
                                            DESIGN.md rule 12); reported as missing
not returned, batch failed, expired or      release; reported as missing
cancelled
returned but never submitted                nothing to settle; reported as unexpected
==========================================  ================================================

Pure: no I/O, no clock. The gateway edge (:mod:`comptroller.gateway.batches`) settles and
releases in the ledger and reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from comptroller.domain.usage import Usage, UsageError, from_anthropic_usage, from_openai_usage

__all__ = ["LineResult", "Reconciliation", "Unreturned", "anthropic_results", "openai_results", "reconcile"]


@dataclass(frozen=True, slots=True)
class LineResult:
    """One result line of a finished batch.

    Attributes:
        custom_id: the request it answers.
        succeeded: True when the provider ran it (billed); False for errored, expired, cancelled.
        usage: its usage when succeeded and readable (None: settle the line's bound).
        model: the model the provider reports it ran (None: not reported).
    """

    custom_id: str
    succeeded: bool
    usage: Usage | None = None
    model: str | None = None


class Unreturned(StrEnum):
    """What to do with a line the results do not mention."""

    SETTLE_BOUND = "settle_bound"
    """The batch completed: the line's outcome is unknown, so it is charged its bound."""
    RELEASE = "release"
    """The batch failed, expired or was cancelled: unfinished lines were not run."""


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What a finished batch's results mean for the ledger (see the module table).

    Attributes:
        settle: custom_id -> the usage to settle (None: settle the line's bound).
        served: custom_id -> the model the provider reports it ran, for settled lines that say.
        release: custom_ids to release.
        missing: submitted, not returned.
        duplicate: returned more than once.
        unexpected: returned, never submitted.
    """

    settle: dict[str, Usage | None] = field(default_factory=dict)
    served: dict[str, str] = field(default_factory=dict)
    release: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _sum(usages: Sequence[Usage | None]) -> Usage | None:
    if any(u is None for u in usages):
        return None  # one success without usage: the bound
    known = [u for u in usages if u is not None]
    return Usage(input_tokens=sum(u.input_tokens for u in known), output_tokens=sum(u.output_tokens for u in known),
                 cache_read_tokens=sum(u.cache_read_tokens for u in known),
                 cache_write_tokens=sum(u.cache_write_tokens for u in known),
                 cache_write_1h_tokens=sum(u.cache_write_1h_tokens for u in known))


def reconcile(submitted: Iterable[str], results: Iterable[LineResult], *, unreturned: Unreturned) -> Reconciliation:
    """Match a batch's results to its submitted custom_ids (see the module table).

    Args:
        submitted: the custom_ids reserved at create.
        results: every result line, in any order (repeats allowed).
        unreturned: what to do with submitted lines the results do not mention.

    Returns:
        The actions; every submitted custom_id is in exactly one of ``settle`` and ``release``.
    """
    expected = list(submitted)
    known = set(expected)
    by_id: dict[str, list[LineResult]] = {}
    unexpected: list[str] = []
    for result in results:
        if result.custom_id not in known:
            if result.custom_id not in unexpected:
                unexpected.append(result.custom_id)
            continue
        by_id.setdefault(result.custom_id, []).append(result)
    out = Reconciliation(unexpected=unexpected)
    for custom_id in expected:
        returned = by_id.get(custom_id, [])
        if len(returned) > 1:
            out.duplicate.append(custom_id)
        successes = [r for r in returned if r.succeeded]
        if successes:
            out.settle[custom_id] = _sum([r.usage for r in successes])
            model = next((r.model for r in successes if r.model), None)
            if model is not None:
                out.served[custom_id] = model
        elif returned:
            out.release.append(custom_id)
        else:
            out.missing.append(custom_id)
            if unreturned is Unreturned.SETTLE_BOUND:
                out.settle[custom_id] = None
            else:
                out.release.append(custom_id)
    return out


def _jsonl(raw: bytes) -> Iterable[dict[str, Any]]:
    for row in raw.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(row) if row.strip() else None
        except ValueError:
            continue  # an unreadable result line: its custom_id counts as not returned
        if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
            yield item


def _openai_usage(value: Any) -> Usage | None:
    usage = from_openai_usage(value)
    if usage is None and isinstance(value, Mapping) and "completion_tokens" not in value:
        try:  # embeddings: input only
            usage = Usage(input_tokens=value["prompt_tokens"], output_tokens=0)
        except (KeyError, TypeError, UsageError):
            return None
    return usage


def openai_results(output: bytes, errors: bytes = b"") -> list[LineResult]:
    """The result lines of an OpenAI batch: its output file and its error file (JSONL).

    A line succeeded when its ``response.status_code`` is 2xx and it has no ``error``.
    """
    results = []
    for item in [*_jsonl(output), *_jsonl(errors)]:
        response = item.get("response") if isinstance(item.get("response"), dict) else {}
        status = response.get("status_code") if isinstance(response, dict) else None
        ok = item.get("error") is None and isinstance(status, int) and 200 <= status < 300
        body = response.get("body") if isinstance(response, dict) else None
        usage = _openai_usage(body.get("usage")) if ok and isinstance(body, dict) else None
        model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
        results.append(LineResult(item["custom_id"], ok, usage, model))
    return results


def anthropic_results(raw: bytes) -> list[LineResult]:
    """The result lines of an Anthropic Message Batch (its results JSONL).

    ``result.type == "succeeded"`` is billed (usage in ``result.message.usage``); ``errored``,
    ``canceled`` and ``expired`` are not (docs "Batch processing: results").
    """
    results = []
    for item in _jsonl(raw):
        result = item.get("result") if isinstance(item.get("result"), dict) else {}
        ok = isinstance(result, dict) and result.get("type") == "succeeded"
        message = result.get("message") if isinstance(result, dict) else None
        usage = from_anthropic_usage(message.get("usage")) if ok and isinstance(message, dict) else None
        model = message.get("model") if isinstance(message, dict) and isinstance(message.get("model"), str) else None
        results.append(LineResult(item["custom_id"], ok, usage, model))
    return results
