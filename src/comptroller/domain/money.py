"""Money as integer millicents, and the one place Decimal USD becomes an integer.

1 USD = 100,000 millicents (mc). Every amount stored, compared or summed by
comptroller is an ``int`` of millicents. Decimal appears only where a price
(USD per million tokens) meets a token count, and every conversion names how it
rounds:

* :func:`usd_to_mc_ceil` rounds up: used for reservation ceilings, which must be
  upper bounds.
* :func:`usd_to_mc_half_up` rounds half up: used for the settled cost of one call.

Reports sum the settled integers, so totals are exact and reproducible.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation

__all__ = ["MC_PER_USD", "format_usd", "mc_to_usd", "parse_usd", "usd_to_mc_ceil", "usd_to_mc_half_up"]

MC_PER_USD = 100_000
_MC_PER_USD_DEC = Decimal(MC_PER_USD)


def usd_to_mc_ceil(usd: Decimal) -> int:
    """Convert a Decimal USD amount to millicents, rounding up (toward +inf).

    Args:
        usd: an exact Decimal amount in USD, finite and >= 0.

    Returns:
        int millicents >= ``usd * 100,000``.

    Raises:
        ValueError: if ``usd`` is negative or not finite.
    """
    _check(usd)
    return int((usd * _MC_PER_USD_DEC).to_integral_value(rounding=ROUND_CEILING))


def usd_to_mc_half_up(usd: Decimal) -> int:
    """Convert a Decimal USD amount to millicents, rounding half up.

    Args:
        usd: an exact Decimal amount in USD, finite and >= 0.

    Returns:
        int millicents: the nearest integer, .5 rounding up.

    Raises:
        ValueError: if ``usd`` is negative or not finite.
    """
    _check(usd)
    return int((usd * _MC_PER_USD_DEC).to_integral_value(rounding=ROUND_HALF_UP))


def mc_to_usd(mc: int) -> Decimal:
    """Exact Decimal USD for an integer millicent amount (for display only)."""
    return Decimal(mc) / _MC_PER_USD_DEC


def format_usd(mc: int) -> str:
    """Render millicents as a dollar string with 5 decimals, e.g. ``$0.02423``."""
    sign = "-" if mc < 0 else ""
    return f"{sign}${mc_to_usd(abs(mc)):.5f}"


def _check(usd: Decimal) -> None:
    if not usd.is_finite() or usd < 0:
        raise ValueError(f"a USD amount must be finite and >= 0, got {usd!r}")


def parse_usd(value: object, field_name: str) -> Decimal:
    """A non-negative finite Decimal from a config value (a string such as ``"0.50"``, an int or a float).

    Floats are read by their shortest repr, so ``0.1`` is ``Decimal("0.1")``.

    Raises:
        ValueError: naming ``field_name`` when the value is not a finite number >= 0.
    """
    if isinstance(value, float):
        value = repr(value)
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{field_name} must be a decimal number such as \"0.50\", got {value!r}") from None
    if not result.is_finite() or result < 0:
        raise ValueError(f"{field_name} must be finite and >= 0, got {value!r}")
    return result
