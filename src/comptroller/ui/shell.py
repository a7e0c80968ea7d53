"""The UI's shared parts (:class:`UI`): the ledger, the sessions, the templates and the page frame.

Both the router (:mod:`comptroller.ui.app`) and the page handlers (:mod:`comptroller.ui.pages`)
use it; neither imports the other's internals.
"""

from __future__ import annotations

import hmac
from decimal import Decimal
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from comptroller.actions_config import ActionPolicy
from comptroller.domain.money import format_usd
from comptroller.engine import Engine
from comptroller.engine.actions import ActionService
from comptroller.engine.admin import Admin
from comptroller.engine.tasks import TaskService
from comptroller.storage.keys import KeyStore, hash_key
from comptroller.storage.transfers import TransferStore
from comptroller.ui.session import ENV_ADMIN_ID, Session, Sessions
from comptroller.ui.views import Viewer

__all__ = ["NAV", "UI"]

NAV: tuple[tuple[str, str, bool], ...] = (
    ("/", "Overview", True), ("/budgets", "Budgets", True), ("/defenses", "Defenses", True),
    ("/requests", "Requests", True), ("/routing", "Routing", True), ("/cache", "Cache", True),
    ("/wallets", "Wallets & P&L", True), ("/actions", "Actions & tasks", True),
)
"""(path under /ui, label, shown) of the navigation bar."""
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'")


class UI:
    """The UI's shared parts: the ledger, the sessions, the templates.

    Args:
        engine: the engine whose ledger the pages read (and where budgets are set).
        keys: the key store logins are checked against.
        namespace: the namespace calls are attributed to.
        admin_key: a plaintext admin key from the environment (None: only stored admin keys).
        secret: the session signing secret (None: ``COMPTROLLER_UI_SECRET`` or random).
        transfers: the wallets' transfer store beside the ledger (None: the Wallets page says none is wired).
        margin_floor: the policy's ``fees.margin_floor``: P&L rows below it are flagged (None: no flags).
    """

    def __init__(self, *, engine: Engine, keys: KeyStore, namespace: str, admin_key: str | None = None,
                 secret: str | None = None, transfers: TransferStore | None = None,
                 margin_floor: Decimal | None = None) -> None:
        self.engine, self.keys, self.namespace = engine, keys, namespace
        self.transfers, self.margin_floor = transfers, margin_floor
        self.ops = Admin(engine.store, engine.clock)
        # read-only here (list, get, spend): the policy's [actions] rules are never consulted
        self.actions = ActionService(engine.store, engine.clock, ActionPolicy({}, "(the UI only reads actions)"))
        self.tasks = TaskService(engine.store, engine.clock, self.actions)
        self.sessions = Sessions(keys, secret=secret)
        self._admin_digest = None if admin_key is None else hash_key(admin_key)
        self.env = Environment(loader=PackageLoader("comptroller.ui", "templates"),
                               autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
        self.env.filters["usd"] = format_usd
        self.env.filters["pct"] = lambda x: f"{x:.1%}"

    def login(self, plaintext: str) -> Viewer | None:
        """The viewer of a key (None: unknown or revoked)."""
        plaintext = plaintext.strip()
        if not plaintext:
            return None
        if self._admin_digest is not None and hmac.compare_digest(self._admin_digest, hash_key(plaintext)):
            return Viewer(ENV_ADMIN_ID, True, None)
        key = self.keys.verify(plaintext)
        if key is None:
            return None
        return Viewer(key.id, key.admin, None if key.admin else key.tenant)

    def render(self, request: Request, template: str, session: Session | None, status: int = 200,
               **context: Any) -> HTMLResponse:
        """A page, with the base path, the viewer and the CSRF token in its context."""
        html = self.env.get_template(template).render(
            base=request.scope.get("root_path", "").rstrip("/"), path=request.url.path, session=session,
            viewer=None if session is None else session.viewer, namespace=self.namespace, nav=NAV, **context)
        return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": _CSP,
                                                                "X-Content-Type-Options": "nosniff",
                                                                "Cache-Control": "no-store"})
