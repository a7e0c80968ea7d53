"""Prices in exact Decimal USD per million tokens, and the cost of a call in millicents.

A :class:`ModelPrice` holds one model's rates at one moment. Rates are either a
flat Decimal or a :class:`TieredRate`: genai-prices' cliff model, where the total
input tokens of the call pick one rate for *all* tokens of that kind (Anthropic
and Google long-context pricing; genai-prices ``TieredPrices``).

USD per call = sum(rate_per_mtok x tokens) / 1,000,000, so millicents =
sum(rate x tokens) / 10, computed in Decimal and rounded once:

* :func:`cost_mc` rounds half up (the settled cost of one call);
* :func:`ceiling_mc` rounds up and prices every input token at the highest
  input-side rate the model has (plain, cache write 5m or 1h), so it is an upper
  bound whatever caching the provider applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from comptroller.domain.money import usd_to_mc_ceil, usd_to_mc_half_up
from comptroller.domain.usage import Usage

__all__ = ["ModelPrice", "Rate", "TieredRate", "ceiling_mc", "cost_mc", "cost_usd"]

_PER = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class TieredRate:
    """A rate that depends on the call's total input tokens (cliff model).

    Attributes:
        base: USD per million tokens while total input <= the first tier's start.
        tiers: ``(start_tokens, usd_per_mtok)`` pairs, ascending; a call whose total
            input tokens exceed ``start_tokens`` pays that rate on all its tokens.
    """

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...]

    def at(self, total_input_tokens: int) -> Decimal:
        """The rate (USD per million tokens) that applies at this input size."""
        rate = self.base
        for start, tier_rate in self.tiers:
            if total_input_tokens > start:
                rate = tier_rate
        return rate

    def __str__(self) -> str:
        """Readable tiers, e.g. ``3; $6 when input > 200,000 tokens`` (edges print a ``$`` before it)."""
        return "; ".join([str(self.base), *(f"${rate} when input > {start:,} tokens" for start, rate in self.tiers)])

    def highest_up_to(self, total_input_tokens: int) -> Decimal:
        """The highest rate reachable by any input size <= ``total_input_tokens``."""
        rates = [self.base] + [r for start, r in self.tiers if total_input_tokens > start]
        return max(rates)


Rate = Decimal | TieredRate


def _rate_at(rate: Rate | None, total_input_tokens: int) -> Decimal:
    if rate is None:
        return Decimal(0)
    if isinstance(rate, TieredRate):
        return rate.at(total_input_tokens)
    return rate


def _highest(rate: Rate | None, total_input_tokens: int) -> Decimal:
    if rate is None:
        return Decimal(0)
    if isinstance(rate, TieredRate):
        return rate.highest_up_to(total_input_tokens)
    return rate


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices, USD per million tokens, valid at one moment.

    Attributes:
        model: the priced model's id (e.g. ``gpt-4o-mini``).
        input_mtok: plain (uncached) input rate.
        output_mtok: output rate.
        cache_read_mtok: cache-read rate; ``None`` means reads cost the input rate.
        cache_write_mtok: cache-write rate (5-minute TTL); ``None``: the input rate.
        cache_write_1h_mtok: 1-hour cache-write rate; ``None``: the 5-minute rate.
        source: where the price came from (``genai-prices 0.2.3``, an override file).
        max_output_tokens: the model's largest output, when known (a ceiling of last resort).
        context_window: the model's context window in tokens, when known.
    """

    model: str
    input_mtok: Rate
    output_mtok: Rate
    cache_read_mtok: Rate | None = None
    cache_write_mtok: Rate | None = None
    cache_write_1h_mtok: Rate | None = None
    source: str = ""
    max_output_tokens: int | None = None
    context_window: int | None = field(default=None)

    def bucket_rates(self, total_input_tokens: int) -> dict[str, Decimal]:
        """The USD/Mtok rate for each disjoint usage bucket at this input size."""
        plain = _rate_at(self.input_mtok, total_input_tokens)
        read = _rate_at(self.cache_read_mtok, total_input_tokens) if self.cache_read_mtok is not None else plain
        write = (_rate_at(self.cache_write_mtok, total_input_tokens)
                 if self.cache_write_mtok is not None else plain)
        write_1h = (_rate_at(self.cache_write_1h_mtok, total_input_tokens)
                    if self.cache_write_1h_mtok is not None else write)
        return {
            "uncached_input": plain,
            "cache_read": read,
            "cache_write_5m": write,
            "cache_write_1h": write_1h,
            "output": _rate_at(self.output_mtok, total_input_tokens),
        }


def cost_usd(price: ModelPrice, usage: Usage) -> Decimal:
    """Exact Decimal USD of one call: sum over disjoint buckets of rate x tokens / 1e6."""
    rates = price.bucket_rates(usage.input_tokens)
    total = (
        rates["uncached_input"] * usage.uncached_input_tokens
        + rates["cache_read"] * usage.cache_read_tokens
        + rates["cache_write_5m"] * usage.cache_write_5m_tokens
        + rates["cache_write_1h"] * usage.cache_write_1h_tokens
        + rates["output"] * usage.output_tokens
    )
    return total / _PER


def cost_mc(price: ModelPrice, usage: Usage) -> int:
    """Settled cost of one call in millicents, rounded half up.

    Args:
        price: the model's price at the call's time.
        usage: the normalised usage (:class:`Usage`).

    Returns:
        int millicents.
    """
    return usd_to_mc_half_up(cost_usd(price, usage))


def ceiling_mc(price: ModelPrice, *, input_tokens_max: int, output_tokens_max: int) -> int:
    """An upper bound in millicents on the cost of a call, rounded up.

    Every input token is priced at the highest input-side rate of the model
    (plain input, cache read, cache write 5m, cache write 1h) and of any tier reachable at
    ``input_tokens_max``; output at the highest output rate reachable. So for any
    usage with ``input_tokens <= input_tokens_max`` and ``output_tokens <=
    output_tokens_max``, ``cost_mc(price, usage) <= ceiling_mc(...)``.

    Args:
        price: the model's price at the call's time.
        input_tokens_max: upper bound on input tokens (>= 0).
        output_tokens_max: the output cap, tokens (>= 0).

    Raises:
        ValueError: on a negative bound.
    """
    if input_tokens_max < 0 or output_tokens_max < 0:
        raise ValueError(
            f"token bounds must be >= 0, got input_tokens_max={input_tokens_max}, "
            f"output_tokens_max={output_tokens_max}"
        )
    input_rate = max(
        _highest(price.input_mtok, input_tokens_max),
        _highest(price.cache_read_mtok, input_tokens_max),
        _highest(price.cache_write_mtok, input_tokens_max),
        _highest(price.cache_write_1h_mtok, input_tokens_max),
    )
    output_rate = _highest(price.output_mtok, input_tokens_max)
    usd = (input_rate * input_tokens_max + output_rate * output_tokens_max) / _PER
    return usd_to_mc_ceil(usd)
