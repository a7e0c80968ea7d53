"""Routing at the edge: run a cascade through the engine, and load ``[cascades]`` / ``[routing]`` configuration.

For an edge (SDK, gateway, replay) the integration is::

    config = load_routing(policy_cascades, policy_routing, prices=engine.prices, pinning=pins)
    result = config.run(engine, CascadeRequest(attribution, input_tokens_max, max_tokens, prompt),
                        call=one_tier_call, facts=RouteFacts(agent, input_tokens_max), cascade="support")
    result.reply, result.tier, result.headers()
"""

from comptroller.routing.config import RoutingConfig, load_routing
from comptroller.routing.runner import (
    AttemptRecord,
    CascadeRequest,
    CascadeResult,
    Outcome,
    TierCall,
    TierReply,
    run_cascade,
    run_cascade_async,
)

__all__ = [
    "AttemptRecord",
    "CascadeRequest",
    "CascadeResult",
    "Outcome",
    "RoutingConfig",
    "TierCall",
    "TierReply",
    "load_routing",
    "run_cascade",
    "run_cascade_async",
]
