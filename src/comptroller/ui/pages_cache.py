"""The Cache page (``GET /ui/cache``): prompt-cache hit rate and money saved, by model and by agent.

The range picker is the overview's (start, end, tenant, agent, model; the range ends on the last
day with spend unless asked); the figures are :func:`comptroller.ui.cache_view.cache_groups` over
the settled calls the viewer may see, priced by the engine's price book.
"""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from comptroller.ui.cache_view import cache_groups
from comptroller.ui.inputs import range_filters, tenant_filter, viewer_of
from comptroller.ui.views import key_of

if TYPE_CHECKING:
    from comptroller.ui.session import Session
    from comptroller.ui.shell import UI

__all__ = ["cache"]


def cache(ui: UI, request: Request, session: Session) -> Response:
    """Hit rate (cache reads / input tokens) and saved millicents over a range, by model and by agent."""
    viewer = viewer_of(session)
    records = [r for r in ui.engine.store.usage_records() if viewer.sees(r.attribution)]
    tenant = tenant_filter(viewer, request.query_params.get("tenant"))
    last_day = max((r.resolved_at.date() for r in records if tenant in (None, r.attribution.tenant)),
                   default=ui.engine.clock.now().astimezone(UTC).date())
    filters = range_filters(request, viewer, last_day)
    kept = [r for r in records if filters.keeps(r)]
    by_model, total = cache_groups(kept, ui.engine.prices.price, lambda r: r.model)
    by_agent, _ = cache_groups(kept, ui.engine.prices.price, lambda r: f"{r.attribution.tenant}/{r.attribution.agent}"
                               if filters.tenant is None else r.attribution.agent)
    scoped = [r for r in records if filters.tenant in (None, r.attribution.tenant)]
    return ui.render(request, "cache.html", session, filters=filters, total=total, by_model=by_model,
                     by_agent=by_agent, agent_label="tenant/agent" if filters.tenant is None else "agent",
                     choices={f: sorted({key_of(r, f) for r in scoped}) for f in ("tenant", "agent", "model")})
