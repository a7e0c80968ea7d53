"""The stub upstream's OpenAI Responses, embeddings and legacy completions, plain and streamed.

Shapes from OpenAI's API reference ("Responses", "Streaming responses", "Embeddings",
"Completions"). Token counts follow :mod:`stub_upstream`'s rules: ``prompt_tokens`` is
:func:`input_words` plus 3 per input item; the reply is ``reply_words`` words cut to the
request's output limit; ``StubControl.reasoning_tokens`` are added to the output count
(OpenAI counts reasoning in ``output_tokens``) and ``cached_tokens`` reported as cache reads.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["completions", "embeddings", "input_words", "responses"]


def input_words(value: Any) -> int:
    """Words of every string in ``value`` (a string, items with string or text-part content, or a list of strings)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(input_words(v) for v in value)
    if isinstance(value, dict):
        return input_words(value.get("content")) + input_words(value.get("text"))
    return 0


def _items(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def responses_prompt_tokens(body: dict[str, Any]) -> int:
    """The stub's input tokens of a Responses request: words of input and instructions, plus 3 per item."""
    return input_words(body.get("input")) + input_words(body.get("instructions")) + 3 * _items(body.get("input"))


async def responses(control: Any, body: dict[str, Any], send: Any, words: list[str], json_reply: Any) -> None:
    """``POST /v1/responses``."""
    prompt = responses_prompt_tokens(body)
    output = len(words) + control.reasoning_tokens
    usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": min(control.cached_tokens, prompt)},
             "output_tokens": output, "output_tokens_details": {"reasoning_tokens": control.reasoning_tokens},
             "total_tokens": prompt + output, **control.usage_override}
    text = " ".join(words)
    model = control.served_model or body["model"]
    response = {"id": "resp_stub", "object": "response", "created_at": 0, "status": "completed", "model": model,
                "output": [{"type": "message", "id": "msg_stub", "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                "usage": usage}
    if not body.get("stream"):
        await json_reply(send, 200, response)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    created = {**response, "status": "in_progress", "output": [], "usage": None}
    events = [("response.created", {"type": "response.created", "sequence_number": 0, "response": created})]
    events += [("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": i + 1,
                                                "item_id": "msg_stub", "output_index": 0, "content_index": 0,
                                                "delta": w if i == 0 else f" {w}", "logprobs": []})
               for i, w in enumerate(words)]
    events.append(("response.completed", {"type": "response.completed", "sequence_number": len(words) + 1,
                                          "response": response}))
    if control.drop_after_chunks is not None:  # the created event and that many deltas, then the connection drops
        kept = events[:1 + control.drop_after_chunks]
        data = b"".join(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode() for name, payload in kept)
        await send({"type": "http.response.body", "body": data, "more_body": True})
        raise ConnectionAbortedError("stub: dropping the connection mid-stream")
    data = b"".join(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode() for name, payload in events)
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def embeddings(control: Any, body: dict[str, Any], send: Any, json_reply: Any) -> None:
    """``POST /v1/embeddings``: one 3-dimension vector per input; prompt tokens = words (token ids: their count)."""
    value = body.get("input")
    inputs = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
    prompt = sum(len(v) if isinstance(v, list) else input_words(v) for v in inputs)
    usage = {"prompt_tokens": prompt, "total_tokens": prompt, **control.usage_override}
    await json_reply(send, 200, {"object": "list", "model": control.served_model or body["model"],
                                 "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                          for i in range(len(inputs))], "usage": usage})


async def completions(control: Any, body: dict[str, Any], send: Any, words: list[str], json_reply: Any) -> None:
    """``POST /v1/completions``: ``n`` choices of the reply; usage in the chat shape."""
    n = int(body.get("n") or 1)
    prompt = input_words(body.get("prompt")) + 3
    usage = {"prompt_tokens": prompt, "completion_tokens": n * len(words), "total_tokens": prompt + n * len(words),
             **control.usage_override}
    model = control.served_model or body["model"]
    if not body.get("stream"):
        choices = [{"index": i, "text": " ".join(words), "finish_reason": "stop", "logprobs": None} for i in range(n)]
        await json_reply(send, 200, {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": model,
                                     "choices": choices, "usage": usage})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    chunks = [{"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": model,
               "choices": [{"index": i, "text": w if j == 0 else f" {w}", "finish_reason": None, "logprobs": None}]}
              for j, w in enumerate(words) for i in range(n)]
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": model, "choices": [],
                       "usage": usage})
    data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": False})
