"""A stub batch provider on loopback (OpenAI files and batches, Anthropic message batches), and a gateway on it.

It answers the way the providers document ("Batch" API reference; Anthropic "Message Batches"):

* ``POST /v1/files`` (multipart) stores a file; ``GET /v1/files/{id}`` and ``/content`` serve it;
* ``POST /v1/batches`` creates ``batch_N``; with ``finish_on_create`` it runs at once, else when
  the test calls :meth:`BatchStubControl.finish`: status ``completed``, an output file with one
  line per succeeded request and an error file with one per failed one; ``cancel`` ends it
  ``cancelled`` with no results;
* ``POST /v1/messages/batches`` creates ``msgbatch_N``, ended the same way, with a results JSONL
  (``succeeded`` with ``message.usage``, ``errored`` for failed ids); ``cancel`` ends a running
  batch with every request ``canceled``.

Usage is documented so tests derive expected costs: input tokens are :func:`stub_input_tokens`
of the request's messages, output tokens ``min(reply_words, max_tokens)`` (or ``output_tokens``
when set: a provider ignoring the cap); the model reported is the request's (or ``served_model``);
Anthropic reports
``cache_read_tokens`` cache reads beside ``input_tokens``. ``fail_ids`` are answered as errors,
``drop_ids`` are left out of the results, ``duplicate_ids`` are returned twice.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopback import LoopbackServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from comptroller.batch_config import BatchSection
from comptroller.bootstrap import build_engine
from comptroller.config import Policy
from comptroller.engine import Engine
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.ports import LedgerStore
from comptroller.storage.keys import SQLiteKeyStore, new_key

__all__ = ["BatchStub", "BatchStubControl", "GatewayUnderTest", "start_gateway", "stub_input_tokens"]


def stub_input_tokens(messages: list[dict[str, Any]], system: Any = None) -> int:
    """The stub's input tokens: words of every string content (and system), plus 3 per message."""
    words = sum(len(m["content"].split()) for m in messages if isinstance(m.get("content"), str))
    if isinstance(system, str):
        words += len(system.split())
    return words + 3 * len(messages)


@dataclass
class BatchStubControl:
    """What the stub does and what it saw (set and read by tests)."""

    reply_words: int = 5
    output_tokens: int | None = None
    served_model: str | None = None
    cache_read_tokens: int = 0
    finish_on_create: bool = True
    fail_ids: set[str] = field(default_factory=set)
    drop_ids: set[str] = field(default_factory=set)
    duplicate_ids: set[str] = field(default_factory=set)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    message_batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _file(self, content: bytes, purpose: str) -> str:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = (purpose, content)
        return file_id

    def _usage(self, body: dict[str, Any]) -> tuple[int, int]:
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or self.reply_words
        output = min(self.reply_words, limit) if self.output_tokens is None else self.output_tokens
        return stub_input_tokens(body.get("messages", []), body.get("system")), output

    def _answers(self, custom_ids: list[str]) -> Iterator[tuple[str, bool]]:
        for custom_id in custom_ids:
            if custom_id in self.drop_ids:
                continue
            for _ in range(2 if custom_id in self.duplicate_ids else 1):
                yield custom_id, custom_id not in self.fail_ids

    def finish(self, batch_id: str) -> None:
        """Run a batch now: write its results (OpenAI files or Anthropic JSONL) and end it."""
        with self.lock:
            if batch_id in self.batches:
                self._finish_openai(self.batches[batch_id])
            else:
                self._finish_anthropic(batch_id)

    def _finish_openai(self, batch: dict[str, Any]) -> None:
        lines = [json.loads(row) for row in self.files[batch["input_file_id"]][1].splitlines() if row.strip()]
        by_id = {line["custom_id"]: line["body"] for line in lines}
        out, err = [], []
        for custom_id, ok in self._answers(list(by_id)):
            if ok:
                prompt, completion = self._usage(by_id[custom_id])
                usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
                model = self.served_model or by_id[custom_id]["model"]
                out.append({"id": f"r-{custom_id}", "custom_id": custom_id, "error": None,
                            "response": {"status_code": 200, "body": {"object": "chat.completion", "model": model,
                                                                      "usage": usage}}})
            else:
                err.append({"id": f"r-{custom_id}", "custom_id": custom_id, "response": None,
                            "error": {"code": "server_error", "message": "stub failure"}})
        jsonl = [(b"\n".join(json.dumps(x).encode() for x in rows) + b"\n") if rows else b"" for rows in (out, err)]
        batch.update(status="completed", output_file_id=self._file(jsonl[0], "batch_output"),
                     error_file_id=self._file(jsonl[1], "batch_output") if err else None,
                     request_counts={"total": len(by_id), "completed": len(out), "failed": len(err)})

    def _finish_anthropic(self, batch_id: str) -> None:
        batch = self.message_batches[batch_id]
        params = {r["custom_id"]: r["params"] for r in batch.pop("_requests")}
        rows = []
        for custom_id, ok in self._answers(list(params)):
            if ok:
                prompt, completion = self._usage(params[custom_id])
                usage = {"input_tokens": prompt, "output_tokens": completion,
                         "cache_read_input_tokens": self.cache_read_tokens, "cache_creation_input_tokens": 0}
                message = {"id": f"msg-{custom_id}", "type": "message", "usage": usage,
                           "model": self.served_model or params[custom_id]["model"]}
                result: dict[str, Any] = {"type": "succeeded", "message": message}
            else:
                result = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error",
                                                                                    "message": "stub"}}}
            rows.append(json.dumps({"custom_id": custom_id, "result": result}).encode())
        self.results[batch_id] = b"\n".join(rows) + b"\n"
        batch.update(processing_status="ended", ended_at="2026-01-01T00:00:00Z")


class BatchStub:
    """The stub provider served on loopback for a ``with`` block (``base_url`` ends in ``/v1``)."""

    def __init__(self, control: BatchStubControl | None = None) -> None:
        self.control = control or BatchStubControl()
        c = self.control

        async def upload(request: Request) -> Response:
            form = await request.form()
            upload = form["file"]
            content = await upload.read()  # type: ignore[union-attr]
            with c.lock:
                file_id = c._file(content, str(form["purpose"]))
            return JSONResponse({"id": file_id, "object": "file", "bytes": len(content), "created_at": 0,
                                 "filename": "batch.jsonl", "purpose": str(form["purpose"]), "status": "processed"})

        async def file_object(request: Request) -> Response:
            file_id = request.path_params["file_id"]
            if file_id not in c.files:
                return JSONResponse({"error": {"message": "no such file", "type": "invalid_request_error"}}, 404)
            return JSONResponse({"id": file_id, "object": "file", "bytes": len(c.files[file_id][1]), "created_at": 0,
                                 "filename": "f", "purpose": c.files[file_id][0], "status": "processed"})

        async def file_content(request: Request) -> Response:
            file_id = request.path_params["file_id"]
            if file_id not in c.files:
                return JSONResponse({"error": {"message": "no such file", "type": "invalid_request_error"}}, 404)
            return Response(c.files[file_id][1], media_type="application/octet-stream")

        async def create_batch(request: Request) -> Response:
            body = await request.json()
            with c.lock:
                batch_id = f"batch_{len(c.batches) + 1}"
                c.batches[batch_id] = {"id": batch_id, "object": "batch", "endpoint": body["endpoint"],
                                       "input_file_id": body["input_file_id"], "completion_window": "24h",
                                       "status": "in_progress", "created_at": 0, "output_file_id": None,
                                       "error_file_id": None, "request_counts": {"total": 0, "completed": 0,
                                                                                 "failed": 0}}
            if c.finish_on_create:
                c.finish(batch_id)
            return JSONResponse(c.batches[batch_id])

        async def get_batch(request: Request) -> Response:
            batch = c.batches.get(request.path_params["batch_id"])
            if batch is None:
                return JSONResponse({"error": {"message": "no such batch", "type": "invalid_request_error"}}, 404)
            return JSONResponse(batch)

        async def cancel_batch(request: Request) -> Response:
            batch = c.batches[request.path_params["batch_id"]]
            if batch["status"] == "in_progress":
                batch["status"] = "cancelled"
            return JSONResponse(batch)

        async def create_message_batch(request: Request) -> Response:
            body = await request.json()
            with c.lock:
                batch_id = f"msgbatch_{len(c.message_batches) + 1}"
                c.message_batches[batch_id] = {
                    "id": batch_id, "type": "message_batch", "processing_status": "in_progress",
                    "request_counts": {"processing": len(body["requests"]), "succeeded": 0, "errored": 0,
                                       "canceled": 0, "expired": 0},
                    "ended_at": None, "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z",
                    "archived_at": None, "cancel_initiated_at": None,
                    "results_url": f"{self.base_url}/messages/batches/{batch_id}/results",
                    "_requests": body["requests"]}
            if c.finish_on_create:
                c.finish(batch_id)
            return JSONResponse(_public(c.message_batches[batch_id]))

        async def get_message_batch(request: Request) -> Response:
            batch = c.message_batches.get(request.path_params["batch_id"])
            if batch is None:
                return JSONResponse({"type": "error", "error": {"type": "not_found_error", "message": "no"}}, 404)
            return JSONResponse(_public(batch))

        async def cancel_message_batch(request: Request) -> Response:
            batch = c.message_batches[request.path_params["batch_id"]]
            if batch["processing_status"] == "in_progress":
                rows = [json.dumps({"custom_id": r["custom_id"], "result": {"type": "canceled"}}).encode()
                        for r in batch.pop("_requests")]
                c.results[batch["id"]] = b"\n".join(rows) + b"\n"
                batch.update(processing_status="ended", cancel_initiated_at="2026-01-01T00:00:00Z")
            return JSONResponse(_public(batch))

        async def message_batch_results(request: Request) -> Response:
            batch_id = request.path_params["batch_id"]
            if batch_id not in c.results:
                return JSONResponse({"type": "error", "error": {"type": "not_found_error", "message": "not ended"}},
                                    404)
            return Response(c.results[batch_id], media_type="application/binary")

        app = Starlette(routes=[
            Route("/v1/files", upload, methods=["POST"]),
            Route("/v1/files/{file_id}", file_object, methods=["GET"]),
            Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
            Route("/v1/batches", create_batch, methods=["POST"]),
            Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
            Route("/v1/messages/batches", create_message_batch, methods=["POST"]),
            Route("/v1/messages/batches/{batch_id}", get_message_batch, methods=["GET"]),
            Route("/v1/messages/batches/{batch_id}/results", message_batch_results, methods=["GET"]),
            Route("/v1/messages/batches/{batch_id}/cancel", cancel_message_batch, methods=["POST"]),
        ])
        self._server = LoopbackServer(app)
        self.base_url = f"{self._server.url}/v1"

    def __enter__(self) -> BatchStub:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


@dataclass
class GatewayUnderTest:
    """A running gateway in front of the batch stub."""

    url: str
    engine: Engine
    keys: SQLiteKeyStore
    key: str
    server: LoopbackServer

    def new_key(self, tenant: str, **kwargs: Any) -> str:
        """Store a new key and return its plaintext."""
        record, plaintext = new_key(tenant=tenant, **kwargs)
        self.keys.add(record)
        return plaintext

    def reserved_mc(self) -> int:
        """Money held on every account."""
        return sum(a.reserved_mc for a in self.engine.store.accounts())

    def settled_mc(self) -> int:
        """Money charged on every account."""
        return sum(a.settled_mc for a in self.engine.store.accounts())

    def usage_costs(self) -> dict[str, int]:
        """Usage-log cost by idempotency key's last part (the custom_id)."""
        return {r.idempotency_key.rsplit("|", 1)[1]: r.cost_mc for r in self.engine.store.usage_records()}


def start_gateway(tmp_path: Path, stub: BatchStub, policy: Policy, models: dict[str, str],
                  *, batch: BatchSection | None = None, store: LedgerStore | None = None) -> GatewayUnderTest:
    """A gateway (SQLite ledger in ``tmp_path``) whose models go to the stub; a key of tenant ``acme``.

    Args:
        models: model -> API family (``openai`` or ``anthropic``); the stub serves both, as two providers.
        store: the ledger (default: SQLite in ``tmp_path``; the API keys are there either way).
    """
    db = tmp_path / "ledger.db"
    engine = build_engine(db_url=f"sqlite:///{db}", policy=policy, store=store)
    keys = SQLiteKeyStore(db)
    providers = {kind: ProviderConfig(kind=kind, base_url=stub.base_url) for kind in ("openai", "anthropic")}
    config = GatewayConfig(providers=providers, models=models, admin_key_env=None)
    app = create_app(engine=engine, keys=keys, config=config, namespace=policy.namespace, batch=batch)
    server = LoopbackServer(app).__enter__()
    record, plaintext = new_key(tenant="acme")
    keys.add(record)
    return GatewayUnderTest(url=server.url, engine=engine, keys=keys, key=plaintext, server=server)
