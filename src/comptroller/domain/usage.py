"""Token usage of one call, normalised into one convention before pricing.

Convention (OpenTelemetry GenAI ``gen_ai.usage.input_tokens``, and genai-prices):
``input_tokens`` counts *every* input token, cached or not; ``cache_read_tokens``
and ``cache_write_tokens`` are parts of it, and ``cache_write_1h_tokens`` is the
part of the cache writes made with Anthropic's 1-hour TTL. Pricing then splits
input into disjoint buckets (:meth:`Usage.uncached_input_tokens`, cache reads,
5-minute writes, 1-hour writes) so no token is priced twice.

Providers differ (see :func:`from_openai` and :func:`from_anthropic`):

* OpenAI reports ``prompt_tokens`` *including* ``prompt_tokens_details.cached_tokens``
  (OpenAI API reference, "Prompt caching").
* Anthropic reports ``input_tokens`` *excluding* ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` (Anthropic docs, "Prompt caching: tracking cache
  performance": total input = input + cache read + cache creation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "Usage",
    "UsageError",
    "from_anthropic",
    "from_anthropic_usage",
    "from_openai",
    "from_openai_usage",
    "from_responses_usage",
]


class UsageError(ValueError):
    """A token count is negative, not an integer, or its parts exceed the whole."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call, in the OpenAI / OpenTelemetry convention.

    Attributes:
        input_tokens: all input tokens, including cache reads and writes.
        output_tokens: generated tokens (reasoning tokens included, as billed).
        cache_read_tokens: the part of ``input_tokens`` read from a prompt cache.
        cache_write_tokens: the part of ``input_tokens`` written to a prompt cache.
        cache_write_1h_tokens: the part of ``cache_write_tokens`` written with a
            1-hour TTL (billed at a higher rate by Anthropic).

    Raises:
        UsageError: on a negative or non-integer count, or when the cache parts
            add up to more than ``input_tokens``.
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                     "cache_write_1h_tokens"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise UsageError(f"{name} must be a non-negative integer, got {value!r}")
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise UsageError(
                f"cache_read_tokens ({self.cache_read_tokens}) + cache_write_tokens "
                f"({self.cache_write_tokens}) exceed input_tokens ({self.input_tokens}); "
                "input_tokens must include cached tokens (OpenAI convention): "
                "use from_anthropic() for Anthropic usage"
            )
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise UsageError(
                f"cache_write_1h_tokens ({self.cache_write_1h_tokens}) exceed "
                f"cache_write_tokens ({self.cache_write_tokens})"
            )

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens priced at the plain input rate (neither read nor written to a cache)."""
        return self.input_tokens - self.cache_read_tokens - self.cache_write_tokens

    @property
    def cache_write_5m_tokens(self) -> int:
        """Cache writes at the default (5-minute) rate."""
        return self.cache_write_tokens - self.cache_write_1h_tokens


def from_openai(*, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Usage:
    """Usage from an OpenAI-style ``usage`` object.

    Args:
        prompt_tokens: ``usage.prompt_tokens`` (includes cached tokens).
        completion_tokens: ``usage.completion_tokens``.
        cached_tokens: ``usage.prompt_tokens_details.cached_tokens``.

    Raises:
        UsageError: on invalid counts.
    """
    return Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens, cache_read_tokens=cached_tokens)


def from_openai_usage(value: object) -> Usage | None:
    """Usage from an OpenAI ``usage`` JSON object (``prompt_tokens``, ``completion_tokens``,
    ``prompt_tokens_details.cached_tokens``), or None when it is absent or malformed.

    For edges that read a provider's answer: a missing or bad usage is "unknown", and the
    caller settles the reserved bound instead (never a silent zero).
    """
    if not isinstance(value, Mapping):
        return None
    details = value.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    try:
        return from_openai(prompt_tokens=value["prompt_tokens"], completion_tokens=value["completion_tokens"],
                           cached_tokens=cached or 0)
    except (KeyError, TypeError, UsageError):
        return None


def from_anthropic(
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_input_tokens: int = 0,
    cache_creation_input_tokens: int = 0,
    ephemeral_1h_input_tokens: int = 0,
) -> Usage:
    """Usage from an Anthropic Messages API ``usage`` object.

    Anthropic's ``input_tokens`` excludes cache reads and writes, so they are added
    back to form the total input.

    Args:
        input_tokens: ``usage.input_tokens`` (uncached input only).
        output_tokens: ``usage.output_tokens``.
        cache_read_input_tokens: ``usage.cache_read_input_tokens``.
        cache_creation_input_tokens: ``usage.cache_creation_input_tokens`` (all TTLs).
        ephemeral_1h_input_tokens: ``usage.cache_creation.ephemeral_1h_input_tokens``.

    Raises:
        UsageError: on invalid counts.
    """
    for name, value in (("input_tokens", input_tokens), ("cache_read_input_tokens", cache_read_input_tokens),
                        ("cache_creation_input_tokens", cache_creation_input_tokens)):
        if type(value) is not int or value < 0:
            raise UsageError(f"{name} must be a non-negative integer, got {value!r}")
    return Usage(
        input_tokens=input_tokens + cache_read_input_tokens + cache_creation_input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_input_tokens,
        cache_write_tokens=cache_creation_input_tokens,
        cache_write_1h_tokens=ephemeral_1h_input_tokens,
    )


def from_responses_usage(value: object) -> Usage | None:
    """Usage from an OpenAI Responses ``usage`` JSON object, or None when absent or malformed.

    ``input_tokens`` includes ``input_tokens_details.cached_tokens`` and ``output_tokens``
    includes ``output_tokens_details.reasoning_tokens`` (OpenAI API reference, "The response
    object"), so reasoning is billed as output and cached tokens at the cache-read rate.
    """
    if not isinstance(value, Mapping):
        return None
    details = value.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    try:
        return Usage(input_tokens=value["input_tokens"], output_tokens=value["output_tokens"],
                     cache_read_tokens=cached or 0)
    except (KeyError, TypeError, UsageError):
        return None


def from_anthropic_usage(value: object) -> Usage | None:
    """Usage from an Anthropic Messages ``usage`` JSON object, or None when absent or malformed.

    Reads ``input_tokens``, ``output_tokens``, ``cache_read_input_tokens``,
    ``cache_creation_input_tokens`` and ``cache_creation.ephemeral_1h_input_tokens`` (Anthropic
    docs, "Prompt caching"); see :func:`from_anthropic` for how they map.
    """
    if not isinstance(value, Mapping):
        return None
    creation = value.get("cache_creation")
    one_hour = creation.get("ephemeral_1h_input_tokens") if isinstance(creation, Mapping) else None
    try:
        return from_anthropic(input_tokens=value["input_tokens"], output_tokens=value["output_tokens"],
                              cache_read_input_tokens=value.get("cache_read_input_tokens") or 0,
                              cache_creation_input_tokens=value.get("cache_creation_input_tokens") or 0,
                              ephemeral_1h_input_tokens=one_hour or 0)
    except (KeyError, TypeError, UsageError):
        return None
