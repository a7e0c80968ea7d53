"""What a worker does once before it serves, so that no request pays for it (issue 14, the c=1 tail).

* **The exact tokenizer.** Near a budget's edge the engine recounts an OpenAI model's input
  exactly (:mod:`comptroller.engine.recount`), and the first recount in a process loads the
  vocabulary (:mod:`comptroller.exact_input`: 0.1-0.2 s on a quiet machine, 1.3 s measured at load
  average 6). Admissions run on the event loop when the ledger is free
  (:meth:`comptroller.gateway.runtime.Gateway.run`), so that load stalled the whole worker once,
  and requests waiting on it passed their 2 s bounds (503). The worker loads the vocabularies its
  configured models use before it serves (``[gateway.models]`` and cascade tiers; only with the
  ``exact`` extra installed; resident memory about 140 MB for o200k, 100 MB for cl100k: docs/policy.md).
* **The collector.** ``gc.freeze()`` moves the objects of start-up (about 170,000: routes, price
  tables, configuration) out of the cyclic collector's scans; a full collection over them was
  about 76 ms of CPU, paid by whichever request was running.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

import anyio.to_thread

from comptroller.domain.exact_tokens import encoding_for_model
from comptroller.exact_input import available, count_tokens
from comptroller.gateway.runtime import Gateway

__all__ = ["load_encodings", "warm_worker"]


def load_encodings(models: Iterable[str]) -> set[str]:
    """Load the exact tokenizer vocabularies these models are recounted with (blocking: run it in a thread).

    Returns:
        The encodings loaded (``o200k_base``, ``cl100k_base``); empty without the ``exact`` extra or
        when no model is an OpenAI one.
    """
    if not available():
        return set()
    encodings = {e for e in map(encoding_for_model, models) if e is not None}
    for encoding in sorted(encodings):
        count_tokens(encoding, "")  # the first count loads the vocabulary
    return encodings


async def warm_worker(gateway: Gateway) -> set[str]:
    """Before the worker serves: load its models' vocabularies (in a thread), then freeze start-up's objects.

    Returns:
        The encodings loaded.
    """
    models = {*gateway.config.models, *gateway.tier_models.values()}
    encodings = await anyio.to_thread.run_sync(load_encodings, models)
    gc.freeze()
    return encodings
