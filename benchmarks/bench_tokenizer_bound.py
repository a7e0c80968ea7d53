"""What the exact recount buys the input bound, and what it costs per call (issue 14, "Ceilings").

Part 1, per chat body (the gateway benchmark's prompt, about 1 KB of English, about 10 KB and
100 KB of English and Python code), for ``gpt-4o-mini`` (o200k):

* ``billed``: the cookbook count (3 per message + role + content, + 3), what OpenAI bills;
* ``bytes bound``: :func:`~comptroller.domain.tokens.request_input_tokens_max` (every call);
* ``exact bound``: :func:`~comptroller.domain.exact_tokens.exact_input_tokens_max` with
  ``bpe-openai`` (what a call near a budget's edge is held on);

each bound's ratio to ``billed`` and CPU microseconds per call (best of 5 repeats, ``time.process_time``).

Part 2, what the recount path adds to an admission (``Engine.admit`` + ``release`` on the in-memory
ledger, the 1 KB body, CPU microseconds per call, best of 5): without a recount; with one far from
every edge (the gateway's common case: the guard compares the ceiling and recounts nothing); and
near an edge (the call is recounted and reserved in a second transaction). With ``--pg``, the same
on PostgreSQL (127.0.0.1, a fresh schema, durable commits; 300 calls each): wall and client CPU
milliseconds per admit + release.

    python benchmarks/bench_tokenizer_bound.py [--pg]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpe_openai

from comptroller.clock import SystemClock
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.caps import OutputCaps
from comptroller.domain.exact_tokens import O200K, exact_input_tokens_max
from comptroller.domain.pricing import ceiling_mc
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.engine import CallRequest, Engine
from comptroller.exact_input import count_tokens, input_recount
from comptroller.prices import PriceBook
from comptroller.storage.memory import MemoryStore

ENCODING = bpe_openai.get_encoding(O200K)
MODEL = "gpt-4o-mini"
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
    return {"model": MODEL, "max_tokens": 64,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def billed(body: dict[str, Any]) -> int:
    """OpenAI cookbook, "How to count tokens with tiktoken": 3 per message + role + content, 3 to prime."""
    return 3 + sum(3 + len(ENCODING.encode_ordinary(m["role"])) + len(ENCODING.encode_ordinary(m["content"]))
                   for m in body["messages"])


def exact_bound(body: dict[str, Any]) -> int:
    bound = exact_input_tokens_max(body, api="chat", encoding=O200K, count=count_tokens)
    assert bound is not None
    return bound


def cpu_us(function: Callable[[], object], seconds: float = 0.3) -> float:
    """CPU microseconds per call of ``function``: best of 5 rounds of ``seconds / 5`` each."""
    best = float("inf")
    for _ in range(5):
        n, started = 0, time.process_time()
        while time.process_time() - started < seconds / 5:
            function()
            n += 1
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def bounds_table() -> None:
    """Part 1 (module docstring)."""
    bodies = {
        "bench_gateway.py prompt": {"model": MODEL, "max_tokens": 64,
                                    "messages": [{"role": "user", "content": "Benchmark request 000000001."}]},
        "~1 KB English": chat(PROSE * 2, PROSE * 3),
        "~10 KB English + code": chat(PROSE * 10, CODE * 30),
        "~100 KB English + code": chat(PROSE * 100, CODE * 300),
    }
    print("| body | bytes | billed | bytes bound | ratio | CPU µs | exact bound | ratio | CPU µs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, body in bodies.items():
        size = len(json.dumps(body).encode())
        actual = billed(body)
        by_bytes, by_tokens = request_input_tokens_max(body, api="chat"), exact_bound(body)
        assert actual <= by_tokens <= by_bytes, name
        bytes_us = cpu_us(lambda b=body: request_input_tokens_max(b, api="chat"))  # type: ignore[misc]
        exact_us = cpu_us(lambda b=body: exact_bound(b))  # type: ignore[misc]
        print(f"| {name} | {size:,} | {actual:,} | {by_bytes:,} | {by_bytes / actual:.2f} | {bytes_us:,.0f} "
              f"| {by_tokens:,} | {by_tokens / actual:.2f} | {exact_us:,.0f} |", flush=True)


def admission_table() -> None:
    """Part 2 (module docstring)."""
    body = chat(PROSE * 2, PROSE * 3)
    by_bytes = request_input_tokens_max(body, api="chat")
    who = Attribution(namespace="bench", tenant="t", agent="a")
    price = PriceBook().price(MODEL, SystemClock().now())
    byte_ceiling = ceiling_mc(price, input_tokens_max=by_bytes, output_tokens_max=64)
    print("\n| admission (1 KB body, in-memory ledger) | CPU µs per admit + release | held input tokens |")
    print("|---|---:|---:|")
    cases = [("no recount (before)", 10**12, False), ("recount attached, far from the edge", 10**12, True),
             ("recount attached, near the edge (recounted, 2 transactions)", byte_ceiling * 8, True)]
    for label, limit_mc, recount in cases:
        store = MemoryStore()
        store.put_budget(Budget(Level.TENANT, ANY_SCOPE, limit_mc))
        engine = Engine(store=store, prices=PriceBook(), clock=SystemClock(), caps=OutputCaps(default_tokens=64))
        held: list[int] = []

        def one(engine: Engine = engine, recount: bool = recount, held: list[int] = held) -> None:
            call = CallRequest(who, MODEL, input_tokens_max=by_bytes, max_tokens=64,
                               input_recount=input_recount(body, api="chat") if recount else None)
            admission = engine.admit(call)
            assert admission.reservation is not None
            held.append(admission.reservation.input_tokens_max)
            engine.release(admission.reservation)

        print(f"| {label} | {cpu_us(one, seconds=1.0):,.1f} | {held[-1]:,} |", flush=True)


def postgres_table() -> None:
    """Part 2 on PostgreSQL (module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from postgres.pg_kit import postgres_store  # noqa: PLC0415 (the tests' fresh-schema store, only with --pg)

    body = chat(PROSE * 2, PROSE * 3)
    by_bytes = request_input_tokens_max(body, api="chat")
    who = Attribution(namespace="bench", tenant="t", agent="a")
    byte_ceiling = ceiling_mc(PriceBook().price(MODEL, SystemClock().now()), input_tokens_max=by_bytes,
                              output_tokens_max=64)
    print("\n| admission on PostgreSQL (durable) | wall ms per admit + release | client CPU ms |")
    print("|---|---:|---:|")
    for label, limit_mc, recount in [("no recount (before)", 10**12, False), ("far from the edge", 10**12, True),
                                     ("near the edge (recounted)", byte_ceiling * 8, True)]:
        store = postgres_store(durable=True)
        store.put_budget(Budget(Level.TENANT, ANY_SCOPE, limit_mc))
        engine = Engine(store=store, prices=PriceBook(), clock=SystemClock(), caps=OutputCaps(default_tokens=64))

        def one(engine: Engine = engine, recount: bool = recount) -> None:
            admission = engine.admit(CallRequest(who, MODEL, input_tokens_max=by_bytes, max_tokens=64,
                                                 input_recount=input_recount(body, api="chat") if recount else None))
            assert admission.reservation is not None
            engine.release(admission.reservation)

        one()
        calls, wall, cpu = 300, time.perf_counter(), time.process_time()
        for _ in range(calls):
            one()
        print(f"| {label} | {(time.perf_counter() - wall) / calls * 1e3:.2f} "
              f"| {(time.process_time() - cpu) / calls * 1e3:.2f} |", flush=True)
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pg", action="store_true", help="also measure admissions on PostgreSQL at 127.0.0.1")
    args = parser.parse_args()
    bounds_table()
    admission_table()
    if args.pg:
        postgres_table()


if __name__ == "__main__":
    main()
