"""``comptroller tco``: one GPU node vs an API model, and what the seed's 9.1 M tokens/day claim needs.

The arithmetic is :mod:`comptroller.domain.routing.tco`; this module picks the API's
output price from the price book (genai-prices) unless one is given, and checks the
claim (issue 5, seed "Multi-Agent Mesh Economics": an RTX 4080 node beats API pricing
above 9.1 million output tokens/day) against the stated assumptions.

Default assumptions (each a command-line option; none is a measurement):

* purchase USD 2,000: the RTX 4080's launch price of USD 1,199 (NVIDIA, November 2022)
  plus about USD 800 for the host;
* 36 months of amortisation;
* 400 W around the clock: the card's 320 W total graphics power (NVIDIA specification)
  plus about 80 W for the host, drawn all day (idle draw is lower: a conservative choice);
* USD 0.17 per kWh (about the 2024 US residential average, EIA);
* 400 output tokens/s aggregate for an 8B model with batching (single-stream decoding
  is nearer 100 tokens/s), busy 50 % of the day;
* API: gpt-4o-mini at genai-prices' output price.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from comptroller.domain.routing.tco import BreakEven, GpuNode, api_price_needed, break_even, daily_cost_needed
from comptroller.ports import PriceSource

__all__ = ["DEFAULT_API_MODEL", "DEFAULT_NODE", "SEED_CLAIM_TOKENS_PER_DAY", "TcoAnalysis", "analyse_tco"]

SEED_CLAIM_TOKENS_PER_DAY = Decimal(9_100_000)
DEFAULT_API_MODEL = "gpt-4o-mini"
DEFAULT_NODE = GpuNode(purchase_usd=Decimal(2000), amortisation_months=Decimal(36), power_w=Decimal(400),
                       electricity_usd_per_kwh=Decimal("0.17"), throughput_tokens_s=Decimal(400),
                       utilisation=Decimal("0.5"))


@dataclass(frozen=True, slots=True)
class TcoAnalysis:
    """The break-even of one node against one API price, and the seed claim checked.

    Attributes:
        node: the assumptions.
        api_model: the API model compared (or ``"(given price)"``).
        result: the break-even figures.
        claim_tokens_per_day: the seed's claimed break-even, tokens/day.
        claim_api_usd_per_mtok: the API output price that puts the break-even at the claim.
        claim_daily_cost_usd: the node cost per day that puts it there at this API price.
        claim_within_capacity: True if one node can even produce the claimed volume.
    """

    node: GpuNode
    api_model: str
    result: BreakEven
    claim_tokens_per_day: Decimal
    claim_api_usd_per_mtok: Decimal
    claim_daily_cost_usd: Decimal
    claim_within_capacity: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (Decimals as strings)."""
        r = self.result
        return {
            "node": {k: str(getattr(self.node, k)) for k in (
                "purchase_usd", "amortisation_months", "power_w", "electricity_usd_per_kwh", "throughput_tokens_s",
                "utilisation", "other_usd_per_month")},
            "api_model": self.api_model, "api_usd_per_mtok": str(r.api_usd_per_mtok),
            "daily_cost_usd": str(r.daily_cost_usd), "capacity_tokens_per_day": str(r.capacity_tokens_per_day),
            "cost_per_mtok_usd": str(r.cost_per_mtok_usd), "break_even_tokens_per_day": str(r.tokens_per_day),
            "break_even_within_capacity": r.within_capacity,
            "claim": {"tokens_per_day": str(self.claim_tokens_per_day),
                      "api_usd_per_mtok_needed": str(self.claim_api_usd_per_mtok),
                      "daily_cost_usd_needed": str(self.claim_daily_cost_usd),
                      "within_capacity": self.claim_within_capacity},
        }


def analyse_tco(node: GpuNode, *, prices: PriceSource, at: datetime, api_model: str = DEFAULT_API_MODEL,
                api_usd_per_mtok: Decimal | None = None,
                claim_tokens_per_day: Decimal = SEED_CLAIM_TOKENS_PER_DAY) -> TcoAnalysis:
    """Compare ``node`` with the API's output price (given, else ``api_model``'s at ``at``).

    Raises:
        UnknownModelError: if ``api_model`` has no price and none is given.
        RoutingConfigError: if the API price is not > 0.
    """
    if api_usd_per_mtok is None:
        output_rate = prices.price(api_model, at).output_mtok
        api_usd_per_mtok = output_rate if isinstance(output_rate, Decimal) else output_rate.base
    else:
        api_model = "(given price)"
    result = break_even(node, api_usd_per_mtok)
    return TcoAnalysis(node, api_model, result, claim_tokens_per_day,
                       api_price_needed(node, claim_tokens_per_day),
                       daily_cost_needed(api_usd_per_mtok, claim_tokens_per_day),
                       claim_tokens_per_day <= result.capacity_tokens_per_day)
