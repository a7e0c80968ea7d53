"""A stub provider on loopback for every API the SDK meters: chat, responses, embeddings, completions, messages.

Each answer reports the usage set in :class:`ApiControl` (so tests compute the expected
cost by hand from the same numbers), in the shape of its API:

* ``POST /v1/chat/completions``: ``prompt_tokens`` (cached inside),
  ``completion_tokens`` (reasoning inside); a stream ends with the usage chunk when
  ``stream_options.include_usage`` is set (OpenAI API reference);
* ``POST /v1/responses``: ``input_tokens`` (``input_tokens_details.cached_tokens`` inside),
  ``output_tokens`` (``output_tokens_details.reasoning_tokens`` inside); a stream is
  ``response.created``, ``response.output_text.delta`` per word, ``response.completed``;
* ``POST /v1/embeddings`` and ``POST /v1/completions``;
* ``POST /v1/messages``: ``input_tokens`` *excluding* ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` (with a 1-hour part), streamed as ``message_start`` ...
  ``message_delta`` (cumulative output) ... ``message_stop`` (Anthropic docs).

Every other request is answered ``{}``. Every request is recorded as (path, body).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from loopback import LoopbackServer

__all__ = ["ApiControl", "ApiStub"]


@dataclass
class ApiControl:
    """The usage the stub reports next, and what it saw.

    Attributes:
        input_tokens: all input tokens, cache reads and writes included (OpenAI convention).
        cache_read_tokens: the part read from a prompt cache.
        cache_write_tokens: the part written to a cache (Anthropic only); ``cache_write_1h_tokens`` of it at 1 h.
        reasoning_tokens: the part of the output spent reasoning (OpenAI).
        words: words in a full answer; one word is one output token (cut at the request's output limit).
        chunk_delay_s: wait between stream events.
        served_model: the ``model`` answers name (None: the requested one).
        requests: (path, body) of every request, in order.
    """

    input_tokens: int = 40
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    words: int = 5
    chunk_delay_s: float = 0.0
    served_model: str | None = None
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Back to the defaults, forgetting the requests seen."""
        with self.lock:
            self.input_tokens, self.words, self.chunk_delay_s, self.served_model = 40, 5, 0.0, None
            self.cache_read_tokens = self.cache_write_tokens = self.cache_write_1h_tokens = self.reasoning_tokens = 0
            self.requests.clear()

    def output_tokens(self, body: dict[str, Any]) -> int:
        """Output tokens of an answer to ``body``: the words, cut at its output limit."""
        limits = [body[f] for f in ("max_completion_tokens", "max_tokens", "max_output_tokens") if body.get(f)]
        return min([self.words + self.reasoning_tokens, *limits])


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _text(c: ApiControl, body: dict[str, Any]) -> list[str]:
    return [f"w{i}" for i in range(max(0, c.output_tokens(body) - c.reasoning_tokens))]


def _model(c: ApiControl, body: dict[str, Any]) -> str:
    return c.served_model or str(body["model"])


def _answer(words: list[str], body: dict[str, Any]) -> str:
    """The answer text: the words, or ``{"names": words}`` when the request asks for a JSON schema."""
    formats = [body.get("response_format"), (body.get("text") or {}).get("format")]
    wants_json = any(isinstance(f, dict) and f.get("type") == "json_schema" for f in formats)
    return json.dumps({"names": words}) if wants_json else " ".join(words)


def _chat_usage(c: ApiControl, output: int) -> dict[str, Any]:
    return {"prompt_tokens": c.input_tokens, "completion_tokens": output, "total_tokens": c.input_tokens + output,
            "prompt_tokens_details": {"cached_tokens": c.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": c.reasoning_tokens}}


def _chat(c: ApiControl, body: dict[str, Any], legacy: bool) -> list[bytes] | dict[str, Any]:
    words, output = _text(c, body), c.output_tokens(body)
    kind = "text_completion" if legacy else "chat.completion"
    if not body.get("stream"):
        choice = {"index": 0, "finish_reason": "stop", **({"text": " ".join(words)} if legacy else {
            "message": {"role": "assistant", "content": _answer(words, body)}})}
        return {"id": "cmpl-stub", "object": kind, "created": 0, "model": _model(c, body), "choices": [choice],
                "usage": _chat_usage(c, output)}
    chunk = {"id": "cmpl-stub", "object": f"{kind}.chunk" if not legacy else kind, "created": 0,
             "model": _model(c, body)}
    events = [_sse({**chunk, "choices": [{"index": 0, "finish_reason": None, **(
        {"text": f" {w}"} if legacy else {"delta": {"content": f" {w}"}})}]}) for w in words]
    events.append(_sse({**chunk, "choices": [{"index": 0, "finish_reason": "stop", **(
        {"text": ""} if legacy else {"delta": {}})}]}))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(_sse({**chunk, "choices": [], "usage": _chat_usage(c, output)}))
    return [*events, b"data: [DONE]\n\n"]


def _response(c: ApiControl, body: dict[str, Any], status: str) -> dict[str, Any]:
    words, output = _text(c, body), c.output_tokens(body)
    done = status == "completed"
    return {"id": "resp_stub", "object": "response", "created_at": 0, "model": _model(c, body), "status": status,
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": [
                {"type": "output_text", "text": _answer(words, body), "annotations": []}]}] if done else [],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": c.input_tokens, "input_tokens_details": {"cached_tokens": c.cache_read_tokens},
                      "output_tokens": output, "output_tokens_details": {"reasoning_tokens": c.reasoning_tokens},
                      "total_tokens": c.input_tokens + output} if done else None}


def _responses(c: ApiControl, body: dict[str, Any]) -> list[bytes] | dict[str, Any]:
    if not body.get("stream"):
        return _response(c, body, "completed")
    item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}
    events = [_sse({"type": "response.created", "sequence_number": 0, "response": _response(c, body, "in_progress")}),
              _sse({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": item}),
              _sse({"type": "response.content_part.added", "sequence_number": 2, "output_index": 0, "item_id": "msg_1",
                    "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})]
    events += [_sse({"type": "response.output_text.delta", "sequence_number": 3 + i, "output_index": 0,
                     "item_id": "msg_1", "content_index": 0, "delta": f" {w}", "logprobs": []})
               for i, w in enumerate(_text(c, body))]
    events.append(_sse({"type": "response.completed", "sequence_number": 3 + len(events),
                        "response": _response(c, body, "completed")}))
    return events


def _messages(c: ApiControl, body: dict[str, Any]) -> list[bytes] | dict[str, Any]:
    words = _text(c, body)
    uncached = c.input_tokens - c.cache_read_tokens - c.cache_write_tokens
    usage = {"input_tokens": uncached, "output_tokens": len(words), "cache_read_input_tokens": c.cache_read_tokens,
             "cache_creation_input_tokens": c.cache_write_tokens,
             "cache_creation": {"ephemeral_5m_input_tokens": c.cache_write_tokens - c.cache_write_1h_tokens,
                                "ephemeral_1h_input_tokens": c.cache_write_1h_tokens}}
    message = {"id": "msg_stub", "type": "message", "role": "assistant", "model": _model(c, body),
               "stop_reason": "end_turn", "stop_sequence": None}
    if not body.get("stream"):
        return {**message, "content": [{"type": "text", "text": " ".join(words)}], "usage": usage}
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [_sse({"type": "message_start", "message": start}, "message_start"),
              _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                   "content_block_start")]
    events += [_sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" {w}"}},
                    "content_block_delta") for w in words]
    events += [_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
               _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                     "usage": {"output_tokens": len(words)}}, "message_delta"),
               _sse({"type": "message_stop"}, "message_stop")]
    return events


def _embeddings(c: ApiControl, body: dict[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    return {"object": "list", "model": body["model"], "usage": {"prompt_tokens": c.input_tokens,
                                                               "total_tokens": c.input_tokens},
            "data": [{"object": "embedding", "index": i, "embedding": [0.0, 1.0]} for i in range(len(inputs))]}


async def _send(send: Any, answer: list[bytes] | dict[str, Any], delay_s: float) -> None:
    if isinstance(answer, dict):
        data = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for event in answer:
        if delay_s:
            await asyncio.sleep(delay_s)
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def make_app(control: ApiControl) -> Any:
    """The stub as a raw ASGI app."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw) if raw and raw.startswith(b"{") else {}
        path = scope["path"]
        with control.lock:
            control.requests.append((path, body))
        handlers = {"/v1/chat/completions": lambda: _chat(control, body, legacy=False),
                    "/v1/completions": lambda: _chat(control, body, legacy=True),
                    "/v1/responses": lambda: _responses(control, body),
                    "/v1/messages": lambda: _messages(control, body),
                    "/v1/embeddings": lambda: _embeddings(control, body)}
        handler = handlers.get(path)
        await _send(send, handler() if handler else {}, control.chunk_delay_s)

    return app


class ApiStub(LoopbackServer):
    """The stub served by uvicorn in a daemon thread on 127.0.0.1; ``base_url`` ends in ``/v1``."""

    def __init__(self, control: ApiControl | None = None) -> None:
        self.control = control or ApiControl()
        super().__init__(make_app(self.control), lifespan="off")
        self.base_url = f"{self.url}/v1"
