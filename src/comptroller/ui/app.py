"""The web UI: server-rendered pages over the admin services, mounted at ``/ui``.

=============================  =====  =====================================================
route (under ``/ui``)          who    what
=============================  =====  =====================================================
``GET /login``, ``POST``       all    log in with an API key (admin, or a tenant's key)
``POST /logout``               all    end the session
``GET /``                      both   overview: spend today and this month against budgets,
                                      daily spend by tenant/agent/model/... over a range, top
                                      conversations and tasks, P50/P95 cost per task
``GET /budgets``, ``POST``     both / each budget account: limit, settled, reserved, remaining,
                               admin  next reset, utilisation; the admin sets budgets
``GET /defenses``, ``/feed``   both   kill switches, breakers and their history, the live feed
                                      of refusals by code and level (htmx polls ``/feed``)
``POST /defenses/kill``,       admin  trip / reset a kill switch, each after a confirmation
``/defenses/unkill``                  page; reset a breaker
``/defenses/breaker-reset``
``GET /requests``, ``/rows``   both   recent calls, searchable by tenant, agent, key... (htmx
                                      updates the table)
``GET /routing``               both   escalation rate and P95 cost per cascade tier
``GET /cache``                 both   prompt-cache hit rate and money saved, by model and agent
``GET /wallets``               both   wallet balances, P&L per agent and tenant (margin flags)
``GET /actions``               both   guarded actions with state and reasons; tasks with spend
``/static/...``                all    htmx, uPlot and the stylesheet, vendored (no CDN)
=============================  =====  =====================================================

A tenant key sees only its tenant: naming another tenant in a URL is a 403 page. Every
POST is CSRF-checked (:mod:`comptroller.ui.session`). The pages read the ledger through
its :class:`~comptroller.ports.LedgerStore` methods, :class:`~comptroller.engine.admin.Admin`
and the report models, never storage internals.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from comptroller.engine import Engine
from comptroller.storage.keys import KeyStore
from comptroller.storage.transfers import TransferStore
from comptroller.ui import pages, pages_cache, pages_defenses, pages_wallets
from comptroller.ui.inputs import BadInput, Forbidden
from comptroller.ui.session import Session, Sessions, csrf_ok
from comptroller.ui.shell import UI

__all__ = ["STATIC_DIR", "ui_app", "ui_routes"]

STATIC_DIR = Path(str(resources.files("comptroller.ui") / "static"))
Handler = Callable[[UI, Request, Session], Response]


def _page(ui: UI, handler: Handler, *, admin: bool = False, post: bool = False) -> Callable[[Request], Any]:
    """A route: a logged-in session (else to the login page), CSRF on POST, admin when asked, 403 on Forbidden."""

    async def endpoint(request: Request) -> Response:
        session = ui.sessions.read(request)
        base = request.scope.get("root_path", "").rstrip("/")
        if session is None or session.viewer is None:
            return RedirectResponse(f"{base}/login", status_code=303)
        if post:
            form = await request.form()
            request.state.form = form
            if not csrf_ok(session, str(form.get("csrf") or request.headers.get("x-csrf-token") or "")):
                return ui.render(request, "error.html", session, 403, message="The form expired or did not come "
                                 "from this site (CSRF token missing or wrong): reload the page and try again.")
        if admin and not session.viewer.admin:
            return ui.render(request, "error.html", session, 403, message="This needs an admin key.")
        try:
            return await _run(handler, ui, request, session)
        except Forbidden as exc:
            return ui.render(request, "error.html", session, 403, message=str(exc))
        except BadInput as exc:
            return ui.render(request, "error.html", session, 400, message=str(exc))

    return endpoint


async def _run(handler: Handler, ui: UI, request: Request, session: Session) -> Response:
    """The handler in a worker thread: the ledger reads block, so they stay off the event loop."""
    return await run_in_threadpool(handler, ui, request, session)


def _login_form(ui: UI) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        session = ui.sessions.read(request)
        base = request.scope.get("root_path", "").rstrip("/")
        if request.method == "GET" and session is not None and session.viewer is not None:
            return RedirectResponse(f"{base}/", status_code=303)
        status, error = 200, None
        if request.method == "POST":
            form = await request.form()
            viewer = ui.login(str(form.get("key") or "")) if csrf_ok(session, str(form.get("csrf") or "")) else None
            if viewer is not None:
                response: Response = RedirectResponse(f"{base}/", status_code=303)
                ui.sessions.attach(response, ui.sessions.start(viewer)[1])
                return response
            status, error = 401, "Unknown or revoked API key (or the form expired): try again."
        fresh, cookie = ui.sessions.start(None)
        response = ui.render(request, "login.html", fresh, status, error=error)
        ui.sessions.attach(response, cookie)
        return response

    return endpoint


async def _logout(request: Request) -> Response:
    base = request.scope.get("root_path", "").rstrip("/")
    response = RedirectResponse(f"{base}/login", status_code=303)
    Sessions.clear(response)
    return response


def ui_app(*, engine: Engine, keys: KeyStore, namespace: str, admin_key: str | None = None,
           secret: str | None = None, transfers: TransferStore | None = None,
           margin_floor: Decimal | None = None) -> Starlette:
    """The UI as an ASGI app (mount it at ``/ui``).

    Args:
        engine: the engine whose ledger the pages read.
        keys: the key store logins are checked against.
        namespace: the namespace calls are attributed to.
        admin_key: a plaintext admin key from the environment (None: only stored admin keys).
        secret: the session signing secret (None: ``COMPTROLLER_UI_SECRET`` or a random one).
        transfers: the wallets' transfer store beside the ledger (None: the Wallets page says none is wired).
        margin_floor: the policy's ``fees.margin_floor`` (None: no P&L row is flagged).
    """
    ui = UI(engine=engine, keys=keys, namespace=namespace, admin_key=admin_key, secret=secret,
            transfers=transfers, margin_floor=margin_floor)
    login = _login_form(ui)
    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", _logout, methods=["POST"]),
        Route("/", _page(ui, pages.overview)),
        Route("/budgets", _page(ui, pages.budgets)),
        Route("/budgets", _page(ui, pages.set_budget, admin=True, post=True), methods=["POST"]),
        Route("/defenses", _page(ui, pages_defenses.defenses)),
        Route("/defenses/feed", _page(ui, pages_defenses.refusal_feed)),
        Route("/defenses/kill", _page(ui, pages_defenses.kill, admin=True, post=True), methods=["POST"]),
        Route("/defenses/unkill", _page(ui, pages_defenses.unkill, admin=True, post=True), methods=["POST"]),
        Route("/defenses/breaker-reset", _page(ui, pages_defenses.reset_breaker, admin=True, post=True),
              methods=["POST"]),
        Route("/requests", _page(ui, pages.requests)),
        Route("/requests/rows", _page(ui, pages.request_table)),
        Route("/routing", _page(ui, pages.routing)),
        Route("/cache", _page(ui, pages_cache.cache)),
        Route("/wallets", _page(ui, pages_wallets.wallets)),
        Route("/actions", _page(ui, pages_wallets.actions)),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(routes=routes)


def ui_routes(**kwargs: Any) -> list[Route | Mount]:
    """``/ui`` (the UI, :func:`ui_app` with ``kwargs``) and ``/`` redirecting to it, for a parent app."""

    async def home(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    return [Route("/", home, methods=["GET"]), Mount("/ui", app=ui_app(**kwargs))]
