"""The Defenses page: kill switches, spend-rate breakers with their history, and the live feed of refusals.

========================================  ======  ===============================================
route (under ``/ui``)                     who     what
========================================  ======  ===============================================
``GET /defenses``                         both    kill switches and breakers with their state, the
                                                  breakers' history (opened, reopened, half-open
                                                  probes, closed, reset: the ledger's ``breaker``
                                                  events), refusals by code and level
``GET /defenses/feed?code=&level=``       both    the refusal feed alone (htmx polls it every 5 s):
                                                  counts by code and level, the newest refusals
                                                  with their full reason and evidence
``POST /defenses/kill``, ``/unkill``,     admin   trip / reset a kill switch, close a breaker,
``/breaker-reset``                                each after a confirmation page
========================================  ======  ===============================================

A tenant key sees only the switches, breakers, history and refusals of its own tenant's scopes
(never the namespace's), and changes nothing (DESIGN.md rule 13).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from comptroller.domain.breaker import BreakerStatus
from comptroller.domain.defenses.errors import DefenseConfigError, UnknownScopeError
from comptroller.domain.ledger import Event
from comptroller.domain.scopes import Level
from comptroller.engine.admin import ConcurrentChangeError
from comptroller.ui.inputs import BadInput, base_of, viewer_of

if TYPE_CHECKING:
    from comptroller.ui.session import Session
    from comptroller.ui.shell import UI

__all__ = ["FEED_MAX", "HISTORY_MAX", "defenses", "kill", "refusal_feed", "reset_breaker", "unkill"]

FEED_MAX = 100
"""Refusals the feed lists (newest first)."""
HISTORY_MAX = 100
"""Breaker transitions the history lists (newest first)."""
_CONTEXT = frozenset({"message", "agent", "conversation", "task", "phase", "model"})
"""Detail fields shown in their own columns; the rest is the refusal's evidence."""


def _visible(ui: UI, session: Session, kind: str) -> list[Event]:
    """The ledger's events of ``kind`` the viewer may see, newest first."""
    viewer = viewer_of(session)
    found = [e for e in ui.engine.store.events(kind) if viewer.sees_scope(ui.namespace, e.scope, e.level)]
    found.sort(key=lambda e: e.ts, reverse=True)
    return found


def _feed(ui: UI, request: Request, session: Session) -> dict[str, Any]:
    """The feed's context: counts by (code, level) over every visible refusal, and the newest matching ones."""
    refusals = _visible(ui, session, "refusal")
    code, level = request.query_params.get("code") or "", request.query_params.get("level") or ""
    counts = Counter((e.code, e.level or "-") for e in refusals)
    kept = [e for e in refusals if code in ("", e.code) and level in ("", e.level or "-")]
    return {"counts": sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])), "refusals": kept[:FEED_MAX],
            "matched": len(kept), "code": code, "level": level, "codes": sorted({e.code for e in refusals}),
            "feed_levels": sorted({e.level or "-" for e in refusals}),
            "evidence": lambda e: {k: v for k, v in e.detail.items() if k not in _CONTEXT and v is not None}}


def defenses(ui: UI, request: Request, session: Session, *, error: str | None = None,
             status: int = 200) -> Response:
    """Kill switches, breakers and their history, and the refusal feed (a tenant: its own scopes only)."""
    viewer = viewer_of(session)
    mine = lambda s: viewer.sees_scope(ui.namespace, s.scope, str(s.level))  # noqa: E731 (a one-line filter)
    breakers = sorted(filter(mine, ui.ops.breakers()), key=lambda b: b.status is BreakerStatus.CLOSED)
    return ui.render(request, "defenses.html", session, status, error=error, breakers=breakers,
                     switches=list(filter(mine, ui.ops.kill_switches())),
                     history=_visible(ui, session, "breaker")[:HISTORY_MAX], levels=[str(x) for x in Level],
                     **_feed(ui, request, session))


def refusal_feed(ui: UI, request: Request, session: Session) -> Response:
    """The refusal feed alone (htmx swaps it in every few seconds, and when its filters change)."""
    return ui.render(request, "_refusal_feed.html", session, **_feed(ui, request, session))


def _confirm(ui: UI, request: Request, session: Session, action: str, what: str) -> Response | None:
    """The confirmation page, unless the form says ``confirm=yes``."""
    form = request.state.form
    if form.get("confirm") == "yes":
        return None
    fields = {k: str(v) for k, v in form.items() if k not in ("csrf", "confirm")}
    return ui.render(request, "confirm.html", session, action=action, what=what, fields=fields)


def _defense_op(ui: UI, request: Request, session: Session, op: Callable[[], object]) -> Response:
    try:
        op()
    except (UnknownScopeError, DefenseConfigError, ConcurrentChangeError, ValueError) as exc:
        return defenses(ui, request, session, error=str(exc), status=400)
    return RedirectResponse(f"{base_of(request)}/defenses", status_code=303)


def _scope_form(request: Request) -> tuple[Level, str]:
    form = request.state.form
    try:
        level = Level(str(form.get("level") or ""))
    except ValueError:
        raise BadInput(f"level: {form.get('level')!r} is not one of {', '.join(Level)}") from None
    scope = str(form.get("scope") or "").strip()
    if not scope:
        raise BadInput("scope: give the scope key, e.g. the namespace for the whole platform")
    return level, scope


def kill(ui: UI, request: Request, session: Session) -> Response:
    """Trip a kill switch after a confirmation page (admin)."""
    level, scope = _scope_form(request)
    reason = str(request.state.form.get("reason") or "").strip()
    page = _confirm(ui, request, session, "kill", f"Trip the kill switch on {level} {scope!r}: every call under it "
                    "is refused until it is reset.")
    return page or _defense_op(ui, request, session, lambda: ui.ops.kill(
        level, scope, by=f"ui key {viewer_of(session).key_id}", reason=reason))


def unkill(ui: UI, request: Request, session: Session) -> Response:
    """Reset a kill switch after a confirmation page (admin)."""
    level, scope = _scope_form(request)
    page = _confirm(ui, request, session, "unkill", f"Reset the kill switch on {level} {scope!r}: calls under it "
                    "are admitted again.")
    return page or _defense_op(ui, request, session, lambda: ui.ops.unkill(
        level, scope, by=f"ui key {viewer_of(session).key_id}"))


def reset_breaker(ui: UI, request: Request, session: Session) -> Response:
    """Close a breaker after a confirmation page (admin)."""
    level, scope = _scope_form(request)
    page = _confirm(ui, request, session, "breaker-reset", f"Close the breaker on {level} {scope!r} and reset "
                    "its cooldown.")
    return page or _defense_op(ui, request, session, lambda: ui.ops.reset_breaker(
        level, scope, by=f"ui key {viewer_of(session).key_id}"))
