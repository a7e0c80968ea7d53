"""The Cache page's figures: prompt-cache hit rate and the money the cache saved, by model or by agent.

Pure: the price of a model at a moment is passed in (the engine's price book), so the figures
are testable without a ledger.

* **hit rate** = ``cache_read_tokens / input_tokens`` over the group's settled calls (input tokens
  count every input token, cached or not: :class:`~comptroller.domain.usage.Usage`);
* **saved** = for each call with cache reads, its cost with those reads priced at the plain input
  rate minus its cost as billed (cache reads at the cache-read rate), both by
  :func:`~comptroller.domain.pricing.cost_mc` at the price the call was admitted at (its
  ``reserved_at``, as :meth:`~comptroller.engine.Engine.settle` prices it), integer millicents. The
  input tier depends on ``input_tokens`` only, so both sides use the same tier; each side is rounded
  half up once, so a call's saving is within 1 mc of the exact rate difference x reads. A model the
  price book no longer knows is counted in ``unpriced_calls`` and saves nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from comptroller.domain.ledger import UsageRecord
from comptroller.domain.pricing import ModelPrice, cost_mc

__all__ = ["CacheGroup", "PriceAt", "cache_groups", "saved_mc"]

PriceAt = Callable[[str, datetime], ModelPrice]
"""A model's price at a moment (``PriceSource.price``); raises LookupError for an unknown model."""


@dataclass(slots=True)
class CacheGroup:
    """Settled calls of one group and what the prompt cache did for them (tokens; money in millicents).

    Attributes:
        key: the group (a model id, an agent, or ``total``).
        calls: settled calls.
        cached_calls: calls that read from the cache.
        input_tokens: all input tokens.
        cache_read_tokens: the part of them read from the cache.
        cost_mc: what the calls were charged (the usage log's ``cost_mc``).
        saved_mc: what the cache reads saved (see the module docstring).
        unpriced_calls: calls with cache reads whose model has no price now (their saving is not counted).
    """

    key: str
    calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cost_mc: int = 0
    saved_mc: int = 0
    unpriced_calls: int = 0

    @property
    def hit_rate(self) -> float:
        """``cache_read_tokens / input_tokens`` (0.0 without input)."""
        return self.cache_read_tokens / self.input_tokens if self.input_tokens else 0.0

    def add(self, record: UsageRecord, saved: int | None) -> None:
        """Count one call and its saving (None: its model is unpriced)."""
        self.calls += 1
        self.input_tokens += record.usage.input_tokens
        self.cache_read_tokens += record.usage.cache_read_tokens
        self.cost_mc += record.cost_mc
        if record.usage.cache_read_tokens:
            self.cached_calls += 1
            if saved is None:
                self.unpriced_calls += 1
            else:
                self.saved_mc += saved


def saved_mc(record: UsageRecord, price_at: PriceAt) -> int | None:
    """What one call's cache reads saved, millicents (0 without reads; None: the model is unpriced)."""
    usage = record.usage
    if not usage.cache_read_tokens:
        return 0
    try:
        price = price_at(record.model, record.reserved_at)
    except LookupError:
        return None
    return cost_mc(price, replace(usage, cache_read_tokens=0)) - cost_mc(price, usage)


def cache_groups(records: Iterable[UsageRecord], price_at: PriceAt,
                 key: Callable[[UsageRecord], str]) -> tuple[list[CacheGroup], CacheGroup]:
    """The groups (most saved first, then most input tokens, then by key) and their total.

    Args:
        records: settled calls (usage-log rows).
        price_at: the price book (prices each call with cache reads once).
        key: the group of a record (its model, its agent...).
    """
    out: dict[str, CacheGroup] = {}
    total = CacheGroup("total")
    for record in records:
        saved = saved_mc(record, price_at)
        name = key(record)
        out.setdefault(name, CacheGroup(name)).add(record, saved)
        total.add(record, saved)
    return sorted(out.values(), key=lambda g: (-g.saved_mc, -g.input_tokens, g.key)), total
