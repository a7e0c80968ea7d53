"""The one exception of routing: a cascade, gate or rule that cannot work, found at start-up.

Routing outcomes (a tier passed over, a refusal, every tier exhausted) are values
(:class:`~comptroller.domain.routing.cascade.PassOver`, the run's result); only
configuration mistakes raise.
"""

from __future__ import annotations

__all__ = ["RoutingConfigError"]


class RoutingConfigError(ValueError):
    """A cascade, tier, gate or routing rule is invalid; the message names it and what to write instead."""
