"""Batch APIs as budget rules: read a batch's lines, bound each one, price it at the batch rate.

Two batch APIs are metered (DESIGN.md rule 11):

* OpenAI Batch API: an input JSONL file, one request per line,
  ``{"custom_id", "method": "POST", "url", "body"}`` (API reference, "Batch": "The input
  file ... each line ... custom_id ... must be unique"; every line of one file targets one
  model and the batch's ``endpoint``); results come back as an output file and an error
  file, one line per ``custom_id``.
* Anthropic Message Batches: ``{"requests": [{"custom_id", "params"}]}`` where ``params``
  is a Messages API body (docs "Batch processing"); results are a JSONL of
  ``{"custom_id", "result": {"type": "succeeded" | "errored" | "canceled" | "expired"}}``.

Both providers bill batch calls at 50 % of the standard rates (OpenAI "Batch API" guide;
Anthropic "Batch processing: pricing"). genai-prices models that as a ``processing = batch``
price variant; where it has none, :func:`discounted` applies the policy's percentage to the
standard price, exactly in Decimal.

At create, every line is reserved (its input bound plus its output bound, at the batch
price) or none is; when the batch ends, :mod:`comptroller.domain.batch_results` turns its
results into settle and release actions.

Pure: no I/O, no clock. The gateway edge (:mod:`comptroller.gateway.batches`) reads and
writes the ledger and the provider.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from comptroller.domain.pricing import ModelPrice, Rate, TieredRate
from comptroller.domain.tokens import Api, request_input_tokens_max

__all__ = [
    "LINES_MAX",
    "OPENAI_ENDPOINTS",
    "BatchInputError",
    "BatchLine",
    "discounted",
    "parse_anthropic_requests",
    "parse_openai_jsonl",
]

LINES_MAX = 50_000
"""Requests in one batch, at most (OpenAI: 50,000 per file; Anthropic: 100,000 per batch)."""

OPENAI_ENDPOINTS: Mapping[str, Api] = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}
"""The batch endpoints whose lines the gateway can bound, and their request shape."""

_CUSTOM_ID_LEN_MAX = 512
_CHOICES_MAX = 128  # OpenAI's largest n


class BatchInputError(ValueError):
    """A batch line (or the batch) is malformed, or cannot be bounded.

    Attributes:
        param: where, e.g. ``line 3: body.max_tokens`` or ``requests[2].params.messages``.
    """

    def __init__(self, message: str, *, param: str | None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch, checked and bounded.

    Attributes:
        custom_id: the caller's id of the request, unique in the batch.
        model: the requested model label.
        api: the request shape (``chat``, ``embeddings``, ``messages``).
        body: the request body (the edge sets its output limit to the reserved bound).
        input_tokens_max: an upper bound on its input tokens
            (:func:`comptroller.domain.tokens.request_input_tokens_max`).
        max_tokens: the requested output limit per choice, tokens (None: none sent; embeddings: 0).
        choices: outputs the request generates (OpenAI ``n``): its output is reserved this many times.
    """

    custom_id: str
    model: str
    api: Api
    body: dict[str, Any]
    input_tokens_max: int
    max_tokens: int | None
    choices: int = 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no Infinity or NaN)")


def _custom_id(value: Any, where: str, seen: set[str]) -> str:
    if not isinstance(value, str) or not value or len(value) > _CUSTOM_ID_LEN_MAX:
        raise BatchInputError(f"{where}: custom_id must be a non-empty string of at most {_CUSTOM_ID_LEN_MAX} "
                              f"characters, got {value!r}", param=f"{where}.custom_id")
    if value in seen:
        raise BatchInputError(f"{where}: custom_id {value!r} is used twice; every request of a batch needs its own",
                              param=f"{where}.custom_id")
    seen.add(value)
    return value


def _positive_int(body: Mapping[str, Any], name: str, where: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise BatchInputError(f"{where}: {name} must be an integer >= 1, got {value!r}", param=f"{where}.{name}")
    return value


def _line(custom_id: str, body: Any, api: Api, where: str) -> BatchLine:
    """Check one request body and bound its input and output."""
    if not isinstance(body, dict):
        raise BatchInputError(f"{where} must be an object (the request body)", param=where)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BatchInputError(f"{where}.model must be a non-empty string naming a model", param=f"{where}.model")
    if body.get("stream") not in (None, False):
        raise BatchInputError(f"{where}.stream must be false or absent: a batch request is not streamed",
                              param=f"{where}.stream")
    n = body.get("n", 1)
    if type(n) is not int or not 1 <= n <= _CHOICES_MAX or (n > 1 and api != "chat"):
        raise BatchInputError(f"{where}.n must be an integer 1..{_CHOICES_MAX} (chat only), got {n!r}",
                              param=f"{where}.n")
    if api == "embeddings":
        max_tokens: int | None = 0
    else:
        limits = [v for v in (_positive_int(body, "max_completion_tokens", where),
                              _positive_int(body, "max_tokens", where)) if v is not None]
        max_tokens = min(limits) if limits else None
        if api == "messages" and max_tokens is None:
            raise BatchInputError(f"{where}.max_tokens is required (Anthropic Messages API)",
                                  param=f"{where}.max_tokens")
    try:
        input_max = request_input_tokens_max(body, api=api)
    except ValueError as exc:
        part = getattr(exc, "param", "")
        raise BatchInputError(f"{where}: {exc}", param=f"{where}.{part}" if part else where) from None
    return BatchLine(custom_id=custom_id, model=model, api=api, body=body, input_tokens_max=input_max,
                     max_tokens=max_tokens, choices=n)


def parse_openai_jsonl(raw: bytes, *, endpoint: str | None = None) -> list[BatchLine]:
    """The lines of an OpenAI batch input file, checked and bounded.

    Args:
        raw: the file's bytes (UTF-8 JSONL; blank lines are skipped).
        endpoint: the batch's endpoint, when known; every line's ``url`` must equal it.

    Returns:
        The lines in file order (at least one, at most :data:`LINES_MAX`), all on one
        model and one ``url`` (OpenAI's rule for a batch input file).

    Raises:
        BatchInputError: naming the line and field at fault: not JSON, a missing or
            repeated ``custom_id``, ``method`` not POST, an unsupported ``url``, a body
            that cannot be bounded, a second model or url, too many lines.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchInputError(f"the file is not UTF-8 (byte {exc.start}); upload UTF-8 JSONL", param="file") from None
    lines: list[BatchLine] = []
    seen: set[str] = set()
    url_seen, model_seen = endpoint, None
    for number, row in enumerate(text.splitlines(), start=1):
        if not row.strip():
            continue
        where = f"line {number}"
        try:
            item = json.loads(row, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise BatchInputError(f"{where} is not a JSON object: {exc}", param=where) from None
        if not isinstance(item, dict):
            raise BatchInputError(f"{where} must be a JSON object {{custom_id, method, url, body}}", param=where)
        custom_id = _custom_id(item.get("custom_id"), where, seen)
        if item.get("method") != "POST":
            raise BatchInputError(f"{where}: method must be \"POST\", got {item.get('method')!r}",
                                  param=f"{where}.method")
        url = item.get("url")
        if not isinstance(url, str) or url not in OPENAI_ENDPOINTS:
            raise BatchInputError(f"{where}: url {url!r} cannot be metered in a batch; supported: "
                                  f"{', '.join(OPENAI_ENDPOINTS)}", param=f"{where}.url")
        if url_seen is not None and url != url_seen:
            raise BatchInputError(f"{where}: url {url!r} differs from {url_seen!r}; one batch, one endpoint",
                                  param=f"{where}.url")
        url_seen = url
        line = _line(custom_id, item.get("body"), OPENAI_ENDPOINTS[url], f"{where}: body")
        if model_seen is not None and line.model != model_seen:
            raise BatchInputError(f"{where}: model {line.model!r} differs from {model_seen!r}; OpenAI runs one "
                                  "model per batch file", param=f"{where}.body.model")
        model_seen = line.model
        lines.append(line)
        if len(lines) > LINES_MAX:
            raise BatchInputError(f"the file has more than {LINES_MAX} requests; split it", param="file")
    if not lines:
        raise BatchInputError("the file has no requests; one JSON object per line", param="file")
    return lines


def parse_anthropic_requests(body: Mapping[str, Any]) -> list[BatchLine]:
    """The requests of an Anthropic Message Batch create body, checked and bounded.

    Raises:
        BatchInputError: naming ``requests[i]`` and the field at fault.
    """
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise BatchInputError("requests must be a non-empty array of {custom_id, params}", param="requests")
    if len(requests) > LINES_MAX:
        raise BatchInputError(f"a batch may hold at most {LINES_MAX} requests here; split it", param="requests")
    seen: set[str] = set()
    lines = []
    for i, item in enumerate(requests):
        where = f"requests[{i}]"
        if not isinstance(item, dict):
            raise BatchInputError(f"{where} must be an object {{custom_id, params}}", param=where)
        custom_id = _custom_id(item.get("custom_id"), where, seen)
        lines.append(_line(custom_id, item.get("params"), "messages", f"{where}.params"))
    return lines


def _scale(rate: Rate | None, factor: Decimal) -> Rate | None:
    if rate is None:
        return None
    if isinstance(rate, TieredRate):
        return TieredRate(rate.base * factor, tuple((start, r * factor) for start, r in rate.tiers))
    return rate * factor


def discounted(price: ModelPrice, discount_pct: int) -> ModelPrice:
    """A price with every rate (tiers and cache rates too) lowered by ``discount_pct`` percent, exactly.

    Args:
        price: the standard price.
        discount_pct: 0..100.

    Raises:
        ValueError: for a percentage outside 0..100.
    """
    if type(discount_pct) is not int or not 0 <= discount_pct <= 100:
        raise ValueError(f"discount_pct must be an integer 0..100, got {discount_pct!r}")
    factor = Decimal(100 - discount_pct) / Decimal(100)
    return replace(price, input_mtok=_scale(price.input_mtok, factor) or Decimal(0),
                   output_mtok=_scale(price.output_mtok, factor) or Decimal(0),
                   cache_read_mtok=_scale(price.cache_read_mtok, factor),
                   cache_write_mtok=_scale(price.cache_write_mtok, factor),
                   cache_write_1h_mtok=_scale(price.cache_write_1h_mtok, factor),
                   source=f"{price.source}, batch -{discount_pct}%")
