"""Local GPU node vs API: cost per million output tokens and the daily break-even volume.

Planning arithmetic, not ledger money: every figure is a :class:`~decimal.Decimal` in USD
(never a float; sums and products are exact, a division rounds at Decimal's 28 significant
digits), rounded only for display. The model (all assumptions are inputs):

* a node costs the same every day whether busy or not: its purchase price amortised
  linearly over ``amortisation_months`` (a month is 365.25 / 12 = 30.4375 days), its
  electricity at ``power_w`` around the clock, and ``other_usd_per_month`` (hosting,
  maintenance);
* it generates ``throughput_tokens_s`` output tokens per second (aggregate over the
  requests it batches) for ``utilisation`` of the day, so its capacity is
  ``throughput * 86,400 * utilisation`` output tokens/day;
* the API charges ``api_usd_per_mtok`` per million output tokens (input is left out on
  both sides: the comparison is per output token, as the claim it checks is stated);
* below one node's capacity the local cost is flat, so the break-even volume is
  ``daily cost / API price per token``; above capacity more nodes are needed
  (``ceil(volume / capacity)`` of them).

The claim this checks (issue 5, seed "Multi-Agent Mesh Economics"): an RTX 4080 node
beats API pricing above 9.1 million output tokens/day. :func:`api_price_needed` and
:func:`daily_cost_needed` show which assumptions a given break-even requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from comptroller.domain.routing.errors import RoutingConfigError

__all__ = [
    "DAYS_PER_MONTH",
    "BreakEven",
    "GpuNode",
    "api_cost_usd",
    "api_price_needed",
    "break_even",
    "daily_cost_needed",
    "local_cost_usd",
]

DAYS_PER_MONTH = Decimal("365.25") / 12
"""30.4375 days: the mean Gregorian month."""
_SECONDS_PER_DAY = 86_400
_MTOK = Decimal(1_000_000)
_HOURS_PER_DAY = 24
_W_PER_KW = 1_000


@dataclass(frozen=True, slots=True)
class GpuNode:
    """A local inference node and the assumptions about it.

    Attributes:
        purchase_usd: what the node costs to buy (GPU and host), USD.
        amortisation_months: months over which the purchase is written off (> 0).
        power_w: average power drawn around the clock, watts (>= 0).
        electricity_usd_per_kwh: electricity price, USD per kWh (>= 0).
        throughput_tokens_s: aggregate output tokens per second while generating (> 0).
        utilisation: fraction of the day spent generating, in (0, 1].
        other_usd_per_month: hosting, maintenance, USD per month (>= 0).

    Raises:
        RoutingConfigError: on a value outside its range.
    """

    purchase_usd: Decimal
    amortisation_months: Decimal
    power_w: Decimal
    electricity_usd_per_kwh: Decimal
    throughput_tokens_s: Decimal
    utilisation: Decimal
    other_usd_per_month: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        for name in ("purchase_usd", "power_w", "electricity_usd_per_kwh", "other_usd_per_month"):
            if Decimal(getattr(self, name)) < 0:
                raise RoutingConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("amortisation_months", "throughput_tokens_s"):
            if Decimal(getattr(self, name)) <= 0:
                raise RoutingConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < Decimal(self.utilisation) <= 1:
            raise RoutingConfigError(f"utilisation must be in (0, 1] (a fraction of the day), got {self.utilisation}")

    def daily_cost_usd(self) -> Decimal:
        """Amortisation + electricity + other costs per day, USD."""
        amortisation = Decimal(self.purchase_usd) / (Decimal(self.amortisation_months) * DAYS_PER_MONTH)
        power = Decimal(self.power_w) / _W_PER_KW * _HOURS_PER_DAY * Decimal(self.electricity_usd_per_kwh)
        return amortisation + power + Decimal(self.other_usd_per_month) / DAYS_PER_MONTH

    def capacity_tokens_per_day(self) -> Decimal:
        """Output tokens one node generates per day: throughput * 86,400 s * utilisation."""
        return Decimal(self.throughput_tokens_s) * _SECONDS_PER_DAY * Decimal(self.utilisation)

    def cost_per_mtok_usd(self) -> Decimal:
        """USD per million output tokens when the node's daily capacity is used."""
        return self.daily_cost_usd() / self.capacity_tokens_per_day() * _MTOK


def local_cost_usd(node: GpuNode, tokens_per_day: Decimal) -> Decimal:
    """Daily cost of serving ``tokens_per_day`` locally: ``ceil(volume / capacity)`` nodes (at least one)."""
    nodes = max(1, int((Decimal(tokens_per_day) / node.capacity_tokens_per_day()).to_integral_value(ROUND_CEILING)))
    return nodes * node.daily_cost_usd()


def api_cost_usd(api_usd_per_mtok: Decimal, tokens_per_day: Decimal) -> Decimal:
    """Daily cost of ``tokens_per_day`` output tokens at the API price, USD."""
    return Decimal(tokens_per_day) * Decimal(api_usd_per_mtok) / _MTOK


@dataclass(frozen=True, slots=True)
class BreakEven:
    """The comparison of one node with one API price.

    Attributes:
        daily_cost_usd: the node's cost per day, USD.
        capacity_tokens_per_day: its output capacity, tokens/day.
        cost_per_mtok_usd: its cost per million output tokens at capacity, USD.
        api_usd_per_mtok: the API's output price, USD per million tokens.
        tokens_per_day: the volume above which the node is cheaper (``daily cost / API price``).
        within_capacity: False if that volume is beyond one node's capacity (one node never pays off).
    """

    daily_cost_usd: Decimal
    capacity_tokens_per_day: Decimal
    cost_per_mtok_usd: Decimal
    api_usd_per_mtok: Decimal
    tokens_per_day: Decimal
    within_capacity: bool


def break_even(node: GpuNode, api_usd_per_mtok: Decimal) -> BreakEven:
    """Where one node starts to beat the API on output tokens.

    Raises:
        RoutingConfigError: if the API price is not > 0 (a free API is never beaten).
    """
    price = Decimal(api_usd_per_mtok)
    if price <= 0:
        raise RoutingConfigError(f"the API output price must be > 0 USD per million tokens, got {price}")
    daily = node.daily_cost_usd()
    volume = daily / price * _MTOK
    capacity = node.capacity_tokens_per_day()
    return BreakEven(daily, capacity, node.cost_per_mtok_usd(), price, volume, volume <= capacity)


def api_price_needed(node: GpuNode, tokens_per_day: Decimal) -> Decimal:
    """The API output price (USD per million tokens) at which the break-even is ``tokens_per_day``."""
    return node.daily_cost_usd() / Decimal(tokens_per_day) * _MTOK


def daily_cost_needed(api_usd_per_mtok: Decimal, tokens_per_day: Decimal) -> Decimal:
    """The node cost per day (USD) at which the break-even against the API is ``tokens_per_day``."""
    return Decimal(api_usd_per_mtok) * Decimal(tokens_per_day) / _MTOK
