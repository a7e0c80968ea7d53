"""A stub upstream on loopback for every API the gateway meters, plain and streamed, with usage.

It answers ``POST /v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings`` and
``/v1/completions`` (:mod:`stub_apis`) the way OpenAI's API does, and Anthropic's
``POST /v1/messages`` and ``/v1/messages/count_tokens`` (API references, "Create chat
completion", "The chat completion chunk object", Anthropic "Messages", "Streaming messages"):

* the reply is ``reply_words`` words ``w0 w1 ...``, cut to the request's ``max_tokens``
  (or ``max_completion_tokens``); one word is one completion token, and one stream
  chunk carries one word; a model in ``replies`` answers its canned text instead (whole,
  one completion token per whitespace-separated word; plain answers only);
* ``prompt_tokens`` is :func:`prompt_tokens` of the messages (documented so tests
  derive expected costs from it);
* a stream ends with a chunk carrying ``finish_reason``, then, if
  ``stream_options.include_usage``, a chunk with empty ``choices`` and the usage,
  then ``data: [DONE]``.

:class:`StubControl` sets latency, a delay per chunk, a failure status, or a
connection drop after some chunks; it records every request body received. The server
is uvicorn in a daemon thread (:class:`StubUpstream`), or a process
(``python -m stub_upstream PORT``) for benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from loopback import LoopbackServer
from stub_apis import completions, embeddings, responses

__all__ = ["StubControl", "StubUpstream", "prompt_tokens"]


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The stub's prompt token count: words of every string content, plus 3 per message."""
    words = sum(len(m["content"].split()) for m in messages if isinstance(m.get("content"), str))
    return words + 3 * len(messages)


@dataclass
class StubControl:
    """What the stub does next (set by tests) and what it saw.

    Attributes:
        reply_words: words in a full reply (before the max_tokens cut).
        latency_s: wait before answering.
        chunk_delay_s: wait between stream chunks.
        fail_status: answer this HTTP status with an OpenAI error body instead.
        replies: model -> a canned reply text for plain (non-stream) chat completions.
        fail_models: model -> an HTTP status that model answers with (like ``fail_status``).
        drop_after_chunks: in a stream, cut the connection after this many content chunks.
        omit_usage: leave ``usage`` out of answers (a provider that does not report it).
        cached_tokens: prompt tokens reported as cache reads (OpenAI: inside ``prompt_tokens``;
            Anthropic: ``cache_read_input_tokens``, outside ``input_tokens``).
        cache_write_tokens: Anthropic ``cache_creation_input_tokens`` (outside ``input_tokens``).
        cache_write_1h_tokens: the part of ``cache_write_tokens`` written with the 1-hour TTL.
        reasoning_tokens: reasoning tokens added to the output count (chat, responses).
        served_model: answer with this ``model`` instead of the request's.
        usage_override: usage fields replaced in every answer (a provider that misreports).
        paths: the path of every request received, in order.
        requests: every request body received, in order.
        chunks_sent: content chunks sent in streams.
        disconnects: streams whose client (the gateway) went away before the end.
    """

    reply_words: int = 5
    latency_s: float = 0.0
    chunk_delay_s: float = 0.0
    fail_status: int | None = None
    drop_after_chunks: int | None = None
    omit_usage: bool = False
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    served_model: str | None = None
    usage_override: dict[str, Any] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    replies: dict[str, str] = field(default_factory=dict)
    fail_models: dict[str, int] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    chunks_sent: int = 0
    disconnects: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Back to the defaults, forgetting the requests seen."""
        with self.lock:
            self.reply_words, self.latency_s, self.chunk_delay_s = 5, 0.0, 0.0
            self.fail_status = self.drop_after_chunks = None
            self.omit_usage = False
            self.cached_tokens = self.cache_write_tokens = self.cache_write_1h_tokens = self.reasoning_tokens = 0
            self.served_model = None
            self.usage_override.clear()
            self.paths.clear()
            self.replies.clear()
            self.fail_models.clear()
            self.requests.clear()
            self.chunks_sent = self.disconnects = 0


def _usage(control: StubControl, body: dict[str, Any], completion: int) -> dict[str, Any]:
    prompt = prompt_tokens(body.get("messages") or [])
    completion = completion * int(body.get("n") or 1) + control.reasoning_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": min(control.cached_tokens, prompt)},
            "completion_tokens_details": {"reasoning_tokens": control.reasoning_tokens}, **control.usage_override}


def _anthropic_usage(control: StubControl, body: dict[str, Any], output: int) -> dict[str, Any]:
    one_hour = control.cache_write_1h_tokens
    return {"input_tokens": prompt_tokens(body.get("messages") or []), "output_tokens": output,
            "cache_read_input_tokens": control.cached_tokens, "cache_creation_input_tokens": control.cache_write_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": control.cache_write_tokens - one_hour,
                               "ephemeral_1h_input_tokens": one_hour}, **control.usage_override}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _anthropic(control: StubControl, body: dict[str, Any], send: Any) -> None:
    """Anthropic's Messages API (docs, "Messages" and "Streaming messages"), text only."""
    words = _words(control, body)
    text = " ".join(words)
    usage = _anthropic_usage(control, body, len(words))
    if not body.get("stream"):
        await _json(send, 200, {"id": "msg_stub", "type": "message", "role": "assistant",
                                "model": control.served_model or body["model"],
                                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                "stop_sequence": None, "usage": usage})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    start = {"type": "message_start", "message": {
        "id": "msg_stub", "type": "message", "role": "assistant", "content": [],
        "model": control.served_model or body["model"],
        "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}
    events = [_sse("message_start", start), _sse("content_block_start", {
        "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
    events += [_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": w if i == 0 else f" {w}"}})
               for i, w in enumerate(words)]
    events += [_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
               _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                          "stop_sequence": None},
                                      "usage": {"output_tokens": usage["output_tokens"]}}),
               _sse("message_stop", {"type": "message_stop"})]
    await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})


def _words(control: StubControl, body: dict[str, Any]) -> list[str]:
    limit = (body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
             or control.reply_words)
    return [f"w{i}" for i in range(min(control.reply_words, int(limit)))]


async def _json(send: Any, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None, usage: Any = None) -> bytes:
    chunk: dict[str, Any] = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
                             "model": body["model"],
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def _stream(control: StubControl, body: dict[str, Any], send: Any, receive: Any) -> None:
    gone = asyncio.ensure_future(receive())  # the next message is http.disconnect, if the client leaves
    try:
        await _stream_chunks(control, body, send, gone)
    finally:
        gone.cancel()


async def _stream_chunks(control: StubControl, body: dict[str, Any], send: Any, gone: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    words = _words(control, body)
    await send({"type": "http.response.body", "body": _chunk(body, {"role": "assistant", "content": ""}, None),
                "more_body": True})
    for i, word in enumerate(words):
        if gone.done():
            with control.lock:
                control.disconnects += 1
            return
        if control.drop_after_chunks is not None and i >= control.drop_after_chunks:
            raise ConnectionAbortedError("stub: dropping the connection mid-stream")
        if control.chunk_delay_s:
            await asyncio.sleep(control.chunk_delay_s)
        text = word if i == 0 else f" {word}"
        await send({"type": "http.response.body", "body": _chunk(body, {"content": text}, None), "more_body": True})
        with control.lock:
            control.chunks_sent += 1
    tail = _chunk(body, {}, "stop" if len(words) >= control.reply_words else "length")
    if (body.get("stream_options") or {}).get("include_usage") and not control.omit_usage:
        usage = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
                 "model": control.served_model or body["model"],
                 "choices": [], "usage": _usage(control, body, len(words))}
        tail += f"data: {json.dumps(usage)}\n\n".encode()
    await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})


async def _other_api(control: StubControl, path: str, body: dict[str, Any], send: Any) -> None:
    """Every API but chat completions, by path."""
    if path.endswith("/messages/count_tokens"):
        await _json(send, 200, {"input_tokens": prompt_tokens(body.get("messages") or [])})
    elif path.endswith("/messages"):
        await _anthropic(control, body, send)
    elif path.endswith("/responses"):
        await responses(control, body, send, _words(control, body), _json)
    elif path.endswith("/embeddings"):
        await embeddings(control, body, send, _json)
    else:
        await completions(control, body, send, _words(control, body), _json)


def make_app(control: StubControl) -> Any:
    """The stub as a raw ASGI app."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw or b"{}")
        with control.lock:
            control.requests.append(body)
            control.paths.append(scope["path"])
        if control.latency_s:
            await asyncio.sleep(control.latency_s)
        status = control.fail_models.get(body.get("model", ""), control.fail_status)
        if status is not None:
            await _json(send, status, {"error": {"message": f"stub failure {status}", "type": "server_error",
                                                 "param": None, "code": "stub_failure"}})
            return
        if not scope["path"].endswith("/chat/completions"):
            await _other_api(control, scope["path"], body, send)
            return
        if body.get("stream"):
            await _stream(control, body, send, receive)
            return
        canned = control.replies.get(body["model"])
        words = _words(control, body) if canned is None else canned.split()
        content = " ".join(words) if canned is None else canned
        full = canned is not None or len(words) >= control.reply_words
        answer: dict[str, Any] = {
            "id": "chatcmpl-stub", "object": "chat.completion", "created": 0,
            "model": control.served_model or body["model"],
            "choices": [{"index": i, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop" if full else "length"} for i in range(int(body.get("n") or 1))],
        }
        if not control.omit_usage:
            answer["usage"] = _usage(control, body, len(words))
        await _json(send, 200, answer)

    return app


class StubUpstream(LoopbackServer):
    """The stub served by uvicorn in a daemon thread on 127.0.0.1 (a free port).

    Use as a context manager; ``base_url`` ends in ``/v1``.
    """

    def __init__(self, control: StubControl | None = None) -> None:
        self.control = control or StubControl()
        super().__init__(make_app(self.control), lifespan="off")
        self.base_url = f"{self.url}/v1"


if __name__ == "__main__":  # python stub_upstream.py PORT: serve in this process (benchmarks)
    uvicorn.run(make_app(StubControl()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                lifespan="off", access_log=False)
