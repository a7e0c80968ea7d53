"""The wrapped batch methods of the ``openai`` and ``anthropic`` clients, sync and async.

Every line is reserved at create (its input bound and output bound at the batch price, all
lines or none, before the batch is sent: a refusal raises the SDK's
:class:`~comptroller.sdk.errors.RefusedError` and the provider sees nothing), and the batch
is reconciled by ``custom_id`` the first time the SDK sees it ended (:mod:`.batch_ledger`):

* Anthropic ``messages.batches.create(requests=[...])`` (and ``beta.messages.batches.create``):
  the requests are in the call; each ``params.max_tokens`` is sent as its reserved bound.
  ``retrieve(id)`` of an ended batch reads its results and reconciles; ``results(id)``
  reconciles from the results it returns (and hands them to the caller). A batch still
  running has its leases renewed on ``retrieve``.
* OpenAI ``batches.create(input_file_id=...)``: the lines live in a file uploaded earlier.
  The SDK downloads it at create with ``files.content(input_file_id)`` (free), rather than
  capturing it at ``files.create``: the file may come from another process, and an uploaded
  file cannot change. As the file cannot be rewritten, every chat line must carry
  ``max_tokens`` / ``max_completion_tokens`` within the admitted output bound, or the batch is
  refused (``BatchInputError`` naming the line). ``batches.retrieve(id)`` of an ended batch
  (``completed``, ``failed``, ``expired``, ``cancelled``) reads its output and error files and
  reconciles; unreturned lines are charged their bound when it completed (outcome unknown,
  DESIGN.md rule 12) and released otherwise.

The report of a reconciled batch is :meth:`Comptroller.batch_report` (and the ledger event
``batch``). Reconciling again changes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from comptroller.domain.batch_results import LineResult, Unreturned, anthropic_results, openai_results
from comptroller.domain.batches import BatchInputError, BatchLine, parse_anthropic_requests, parse_openai_jsonl
from comptroller.engine import Admission
from comptroller.sdk.batch_ledger import BatchLedger
from comptroller.sdk.context import CallContext
from comptroller.sdk.metered import Meter

__all__ = ["anthropic_batch_methods", "openai_batch_methods"]

Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]

_OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


def _plain(value: Any) -> Any:
    """A pydantic model or TypedDict as plain JSON data (recursively)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _context(meter: Meter, wrapper: CallContext, kwargs: dict[str, Any]) -> CallContext:
    return meter.context(wrapper, kwargs.pop("attribution", None))


def _anthropic_sent(lines: list[BatchLine], held: dict[str, Admission]) -> list[dict[str, Any]]:
    return [{"custom_id": line.custom_id, "params": {**line.body, "max_tokens": held[line.custom_id].output_tokens_max}}
            for line in lines]


def _anthropic_lines(kwargs: Mapping[str, Any]) -> list[BatchLine]:
    if isinstance(kwargs.get("extra_body"), Mapping) and "requests" in kwargs["extra_body"]:
        raise BatchInputError("send the requests as requests=, not in extra_body", param="extra_body.requests")
    return parse_anthropic_requests({"requests": _plain(kwargs.get("requests"))})


def _results_raw(items: list[Any]) -> bytes:
    return b"".join(json.dumps(_plain(item)).encode() + b"\n" for item in items)


def _check_openai_caps(lines: list[BatchLine], held: dict[str, Admission]) -> None:
    """Every line's own output limit within its admitted bound (the uploaded file cannot be lowered)."""
    for line in lines:
        if line.api == "embeddings":
            continue
        bound = held[line.custom_id].output_tokens_max // line.choices
        if line.max_tokens is None or line.max_tokens > bound:
            raise BatchInputError(f"line {line.custom_id!r}: its output limit ({line.max_tokens}) exceeds the "
                                  f"admitted bound of {bound} tokens, and an uploaded batch file cannot be changed; "
                                  f"set max_tokens (or max_completion_tokens) <= {bound} on every line",
                                  param=f"{line.custom_id}.body.max_tokens")


def anthropic_batch_methods(client: Any, meter: Meter, ledger: BatchLedger, wrapper: CallContext,
                            is_async: bool) -> dict[str, Wrapper]:
    """The wrapped ``messages.batches.create/retrieve/results`` (and ``beta.`` ones the client has)."""
    methods: dict[str, Wrapper] = {}
    for prefix in ("", "beta."):
        resource: Any = client
        for part in (prefix + "messages.batches").split("."):
            resource = getattr(resource, part, None)
        if resource is None:
            continue
        build = _anthropic_async if is_async else _anthropic_sync
        methods.update({prefix + name: wrap for name, wrap in build(resource, meter, ledger, wrapper).items()})
    return methods


def _anthropic_reconcile(ledger: BatchLedger, batch_id: str, items: list[Any]) -> None:
    ledger.reconcile(batch_id, anthropic_results(_results_raw(items)), Unreturned.SETTLE_BOUND, "ended")


def _anthropic_sync(batches: Any, meter: Meter, ledger: BatchLedger, wrapper: CallContext) -> dict[str, Wrapper]:
    def create(inner: Callable[..., Any]) -> Callable[..., Any]:
        def method(**kwargs: Any) -> Any:
            context = _context(meter, wrapper, kwargs)
            lines = _anthropic_lines(kwargs)
            held = ledger.reserve(lines, context, uuid.uuid4().hex)
            try:
                batch = inner(**{**kwargs, "requests": _anthropic_sent(lines, held)})
            except BaseException:
                ledger.release(held.values())
                raise
            ledger.open(batch.id, "anthropic", context, held)
            return batch
        return method

    def retrieve(inner: Callable[..., Any]) -> Callable[..., Any]:
        def method(batch_id: str, **kwargs: Any) -> Any:
            batch = inner(batch_id, **kwargs)
            if ledger.is_open(batch_id):
                if batch.processing_status == "ended":
                    _anthropic_reconcile(ledger, batch_id, list(batches.results(batch_id)))
                else:
                    ledger.renew(batch_id)
            return batch
        return method

    def results(inner: Callable[..., Any]) -> Callable[..., Any]:
        def method(batch_id: str, **kwargs: Any) -> Iterator[Any]:
            items = list(inner(batch_id, **kwargs))
            if ledger.is_open(batch_id):
                _anthropic_reconcile(ledger, batch_id, items)
            return iter(items)
        return method

    return {"messages.batches.create": create, "messages.batches.retrieve": retrieve,
            "messages.batches.results": results}


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _anthropic_async(batches: Any, meter: Meter, ledger: BatchLedger, wrapper: CallContext) -> dict[str, Wrapper]:
    def create(inner: Callable[..., Any]) -> Callable[..., Any]:
        async def method(**kwargs: Any) -> Any:
            context = _context(meter, wrapper, kwargs)
            lines = _anthropic_lines(kwargs)
            held = ledger.reserve(lines, context, uuid.uuid4().hex)
            try:
                batch = await inner(**{**kwargs, "requests": _anthropic_sent(lines, held)})
            except BaseException:
                ledger.release(held.values())
                raise
            ledger.open(batch.id, "anthropic", context, held)
            return batch
        return method

    async def _items(decoder: Any) -> list[Any]:
        return [item async for item in decoder]

    def retrieve(inner: Callable[..., Any]) -> Callable[..., Any]:
        async def method(batch_id: str, **kwargs: Any) -> Any:
            batch = await inner(batch_id, **kwargs)
            if ledger.is_open(batch_id):
                if batch.processing_status == "ended":
                    _anthropic_reconcile(ledger, batch_id, await _items(await batches.results(batch_id)))
                else:
                    ledger.renew(batch_id)
            return batch
        return method

    def results(inner: Callable[..., Any]) -> Callable[..., Any]:
        async def method(batch_id: str, **kwargs: Any) -> AsyncIterator[Any]:
            items = await _items(await inner(batch_id, **kwargs))
            if ledger.is_open(batch_id):
                _anthropic_reconcile(ledger, batch_id, items)
            return _aiter(items)
        return method

    return {"messages.batches.create": create, "messages.batches.retrieve": retrieve,
            "messages.batches.results": results}


def _openai_lines(raw: bytes, kwargs: Mapping[str, Any]) -> list[BatchLine]:
    endpoint = kwargs.get("endpoint")
    return parse_openai_jsonl(raw, endpoint=endpoint if isinstance(endpoint, str) else None)


def _openai_reconcile(ledger: BatchLedger, batch: Any, output: bytes, errors: bytes) -> None:
    results: list[LineResult] = openai_results(output, errors)
    unreturned = Unreturned.SETTLE_BOUND if batch.status == "completed" else Unreturned.RELEASE
    ledger.reconcile(batch.id, results, unreturned, str(batch.status))


def openai_batch_methods(client: Any, meter: Meter, ledger: BatchLedger, wrapper: CallContext,
                         is_async: bool) -> dict[str, Wrapper]:
    """The wrapped ``batches.create/retrieve`` (the file content is read with ``client.files.content``)."""
    files = client.files

    def reserve(raw: bytes, kwargs: dict[str, Any], context: CallContext) -> dict[str, Admission]:
        lines = _openai_lines(raw, kwargs)
        held = ledger.reserve(lines, context, uuid.uuid4().hex)
        try:
            _check_openai_caps(lines, held)
        except BaseException:
            ledger.release(held.values())
            raise
        return held

    if is_async:
        async def content_async(file_id: str | None) -> bytes:
            return b"" if not file_id else bytes((await files.content(file_id)).content)

        def create_async(inner: Callable[..., Any]) -> Callable[..., Any]:
            async def method(**kwargs: Any) -> Any:
                context = _context(meter, wrapper, kwargs)
                held = reserve(await content_async(kwargs.get("input_file_id")), kwargs, context)
                try:
                    batch = await inner(**kwargs)
                except BaseException:
                    ledger.release(held.values())
                    raise
                ledger.open(batch.id, "openai", context, held)
                return batch
            return method

        def retrieve_async(inner: Callable[..., Any]) -> Callable[..., Any]:
            async def method(batch_id: str, **kwargs: Any) -> Any:
                batch = await inner(batch_id, **kwargs)
                if ledger.is_open(batch_id):
                    if batch.status in _OPENAI_ENDED:
                        _openai_reconcile(ledger, batch, await content_async(batch.output_file_id),
                                          await content_async(batch.error_file_id))
                    else:
                        ledger.renew(batch_id)
                return batch
            return method
        return {"batches.create": create_async, "batches.retrieve": retrieve_async}

    def content(file_id: str | None) -> bytes:
        return b"" if not file_id else bytes(files.content(file_id).content)

    def create(inner: Callable[..., Any]) -> Callable[..., Any]:
        def method(**kwargs: Any) -> Any:
            context = _context(meter, wrapper, kwargs)
            held = reserve(content(kwargs.get("input_file_id")), kwargs, context)
            try:
                batch = inner(**kwargs)
            except BaseException:
                ledger.release(held.values())
                raise
            ledger.open(batch.id, "openai", context, held)
            return batch
        return method

    def retrieve(inner: Callable[..., Any]) -> Callable[..., Any]:
        def method(batch_id: str, **kwargs: Any) -> Any:
            batch = inner(batch_id, **kwargs)
            if ledger.is_open(batch_id):
                if batch.status in _OPENAI_ENDED:
                    _openai_reconcile(ledger, batch, content(batch.output_file_id), content(batch.error_file_id))
                else:
                    ledger.renew(batch_id)
            return batch
        return method
    return {"batches.create": create, "batches.retrieve": retrieve}
