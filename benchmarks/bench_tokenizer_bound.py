"""What an exact tokenizer at run time would buy the input bound, and what it costs per call (issue 14, "Ceilings").

For a few chat bodies (the gateway benchmark's prompt, about 1 KB of English, about 10 KB and
100 KB of English and Python code), it prints, for ``gpt-4o-mini`` (o200k):

* ``billed``: the cookbook count (3 per message + role + content, + 3), what OpenAI bills;
* ``bytes bound``: today's :func:`~comptroller.domain.tokens.request_input_tokens_max`;
* ``token bound``: the candidate, o200k tokens (``bpe-openai``, vocabulary in the wheel) of the
  same compact JSON text the byte rule counts, plus the same framing;

each bound's ratio to ``billed`` and CPU microseconds per call (best of 5 repeats, ``time.process_time``).

    python benchmarks/bench_tokenizer_bound.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import bpe_openai

from comptroller.domain.tokens import (
    NOT_BILLED_FIELDS,
    PER_MESSAGE_TOKENS,
    PER_REQUEST_TOKENS,
    request_input_tokens_max,
)

O200K = bpe_openai.get_encoding("o200k_base")
PROSE = ("The comptroller reserves the worst case of every call before it is sent, then settles what the provider "
         "billed. A budget is never overspent, whatever the interleaving of the agents that share it. ")
CODE = '''def settle(reservation, usage):
    """Charge what the call used."""
    cost = price(usage.input_tokens, usage.output_tokens)
    if cost > reservation.ceiling_mc:
        log.warning("usage above the bound: %s", reservation.id)
    return store.settle(reservation.id, cost)

'''


def chat(system: str, user: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "max_tokens": 64,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def billed(body: dict[str, Any]) -> int:
    """OpenAI cookbook, "How to count tokens with tiktoken": 3 per message + role + content, 3 to prime."""
    return 3 + sum(3 + len(O200K.encode_ordinary(m["role"])) + len(O200K.encode_ordinary(m["content"]))
                   for m in body["messages"])


def token_bound(body: dict[str, Any]) -> int:
    """The candidate: exact o200k tokens of the billed fields' compact JSON, plus the byte rule's framing."""
    text = json.dumps({k: v for k, v in body.items() if k not in NOT_BILLED_FIELDS}, ensure_ascii=False,
                      separators=(",", ":"))
    return PER_REQUEST_TOKENS + PER_MESSAGE_TOKENS * len(body["messages"]) + len(O200K.encode_ordinary(text))


def cpu_us(function: Callable[[], object], seconds: float = 0.3) -> float:
    best = float("inf")
    for _ in range(5):
        n, started = 0, time.process_time()
        while time.process_time() - started < seconds / 5:
            function()
            n += 1
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def main() -> None:
    bodies = {
        "bench_gateway.py prompt": {"model": "gpt-4o-mini", "max_tokens": 64,
                                    "messages": [{"role": "user", "content": "Benchmark request 000000001."}]},
        "~1 KB English": chat(PROSE * 2, PROSE * 3),
        "~10 KB English + code": chat(PROSE * 10, CODE * 30),
        "~100 KB English + code": chat(PROSE * 100, CODE * 300),
    }
    print("| body | bytes | billed | bytes bound | ratio | CPU us | token bound | ratio | CPU us |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, body in bodies.items():
        size = len(json.dumps(body).encode())
        actual = billed(body)
        by_bytes = request_input_tokens_max(body, api="chat")
        by_tokens = token_bound(body)
        assert by_tokens >= actual and by_bytes >= actual, name
        print(f"| {name} | {size:,} | {actual:,} | {by_bytes:,} | {by_bytes / actual:.2f} "
              f"| {cpu_us(lambda b=body: request_input_tokens_max(b, api='chat')):,.0f} | {by_tokens:,} "
              f"| {by_tokens / actual:.2f} | {cpu_us(lambda b=body: token_bound(b)):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
