"""What every page handler reads from a request: the viewer, the tenant filter, the date range.

The answers a handler raises to become a page are here too: :class:`Forbidden` (403: a tenant
key named another tenant, DESIGN.md rule 13) and :class:`BadInput` (400, naming the field).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from starlette.requests import Request

from comptroller.ui.views import GROUP_FIELDS, Filters, Viewer

if TYPE_CHECKING:
    from comptroller.ui.session import Session

__all__ = ["RANGE_DAYS", "RANGE_DAYS_MAX", "BadInput", "Forbidden", "base_of", "parse_day", "range_filters",
           "tenant_filter", "viewer_of"]

RANGE_DAYS = 30
"""Days a range spans when the request names no start."""
RANGE_DAYS_MAX = 3 * 366
"""The longest range, days (a point per day: at most ~1,100 points per series)."""


class Forbidden(Exception):  # noqa: N818 (an HTTP answer, as Starlette's HTTPException)
    """The viewer asked for something it may not see (a 403 page)."""


class BadInput(Exception):  # noqa: N818 (an HTTP answer)
    """A query or form field is invalid (a 400 page naming it)."""


def viewer_of(session: Session) -> Viewer:
    """The logged-in viewer of a session (the route checked there is one)."""
    assert session.viewer is not None  # the route checked it
    return session.viewer


def base_of(request: Request) -> str:
    """The path the UI is mounted at (``/ui``), without a trailing slash."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def tenant_filter(viewer: Viewer, asked: str | None) -> str | None:
    """The tenant filter: the asked one (None: all) for an admin; a tenant key gets its own.

    Raises:
        Forbidden: a tenant key asked for another tenant.
    """
    asked = asked or None
    if viewer.tenant is None:
        return asked
    if asked not in (None, viewer.tenant):
        raise Forbidden(f"This key belongs to tenant {viewer.tenant!r}; it cannot see tenant {asked!r}.")
    return viewer.tenant


def parse_day(value: str | None, name: str, default: date) -> date:
    """A ``YYYY-MM-DD`` query field, or ``default`` when empty. Raises BadInput naming the field."""
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name}: {value!r} is not a date; use YYYY-MM-DD") from None


def range_filters(request: Request, viewer: Viewer, last_day: date) -> Filters:
    """The range picker's filters: start, end (default: the 30 days up to ``last_day``), tenant, agent, model,
    key and the group field.

    Raises:
        BadInput: a date that is not one, a range running backwards or longer than 1,098 days, an unknown
            group field.
        Forbidden: a tenant key naming another tenant.
    """
    q = request.query_params
    end = parse_day(q.get("end"), "end", last_day)
    start = parse_day(q.get("start"), "start", end - timedelta(days=RANGE_DAYS - 1))
    if start > end or (end - start).days >= RANGE_DAYS_MAX:
        raise BadInput(f"start {start} .. end {end}: the range must run forward and span at most "
                       f"{RANGE_DAYS_MAX} days")
    group_by = q.get("group_by") or "agent"
    if group_by not in GROUP_FIELDS:
        raise BadInput(f"group_by: {group_by!r} is not one of {', '.join(GROUP_FIELDS)}")
    return Filters(start, end, tenant_filter(viewer, q.get("tenant")), q.get("agent") or None,
                   q.get("model") or None, group_by, q.get("key") or None)
