"""The UI's session: a signed cookie naming the key that logged in, and a per-session CSRF token.

The cookie holds the key's id (never the key), whether it is an admin key, its tenant
and a random CSRF token, signed with HMAC-SHA1 by itsdangerous and valid for
``max_age_s``. It is ``HttpOnly`` and ``SameSite=Strict``. Each request re-reads the key
by id, so a key revoked elsewhere ends its sessions at once; the environment's admin
key has no stored record and is trusted for the cookie's life. Every POST must carry
the session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``; htmx sends the
header), compared in constant time (OWASP CSRF cheat sheet: synchronizer token).

The signing secret comes from ``COMPTROLLER_UI_SECRET``; without it each process draws a
random one, so with several gateway workers set it, or sessions hop between workers and
fail.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from comptroller.storage.keys import KeyStore
from comptroller.ui.views import Viewer

__all__ = ["COOKIE", "ENV_ADMIN_ID", "SECRET_ENV", "Session", "Sessions", "csrf_ok"]

COOKIE = "comptroller_ui"
SECRET_ENV = "COMPTROLLER_UI_SECRET"
ENV_ADMIN_ID = "env-admin"
log = logging.getLogger("comptroller.ui")


@dataclass(frozen=True, slots=True)
class Session:
    """A session: who is logged in (None: nobody yet) and its CSRF token."""

    viewer: Viewer | None
    csrf: str


class Sessions:
    """Reads and writes the signed session cookie.

    Args:
        keys: the key store (a session of a revoked or deleted key is logged out).
        secret: the signing secret (None: ``COMPTROLLER_UI_SECRET``, else random per process).
        max_age_s: how long a session lasts, seconds.
        secure: set the cookie's ``Secure`` flag (serve the UI over HTTPS).
    """

    def __init__(self, keys: KeyStore, *, secret: str | None = None, max_age_s: int = 12 * 3600,
                 secure: bool = False) -> None:
        secret = secret or os.environ.get(SECRET_ENV)
        if not secret:
            log.info("%s is not set: UI sessions are signed with a per-process secret", SECRET_ENV)
            secret = secrets.token_urlsafe(32)
        self._signer = URLSafeTimedSerializer(secret, salt="comptroller-ui-session")
        self.keys, self.max_age_s, self.secure = keys, max_age_s, secure

    def read(self, request: Request) -> Session | None:
        """The request's session, or None when there is no valid cookie."""
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data: dict[str, Any] = self._signer.loads(raw, max_age=self.max_age_s)
        except BadSignature:
            return None
        csrf = str(data.get("csrf", ""))
        viewer = self._viewer(data) if data.get("kid") else None
        return Session(viewer, csrf) if csrf else None

    def _viewer(self, data: dict[str, Any]) -> Viewer | None:
        kid = str(data["kid"])
        if kid == ENV_ADMIN_ID:
            return Viewer(kid, True, None)
        key = self.keys.get(kid)
        if key is None or key.revoked_at is not None:
            return None
        return Viewer(key.id, key.admin, None if key.admin else key.tenant)

    def start(self, viewer: Viewer | None) -> tuple[Session, str]:
        """A new session for ``viewer`` (None: anonymous) with a fresh CSRF token, and its signed cookie value."""
        session = Session(viewer, secrets.token_urlsafe(24))
        return session, self._signer.dumps({"csrf": session.csrf, "kid": None if viewer is None else viewer.key_id})

    def attach(self, response: Response, cookie: str) -> None:
        """Set the session cookie (from :meth:`start`) on ``response``."""
        response.set_cookie(COOKIE, cookie, max_age=self.max_age_s, path="/", httponly=True, samesite="strict",
                            secure=self.secure)

    @staticmethod
    def clear(response: Response) -> None:
        """End the session on ``response``."""
        response.delete_cookie(COOKIE, path="/")


def csrf_ok(session: Session | None, sent: str | None) -> bool:
    """True when ``sent`` is the session's CSRF token (constant-time compare)."""
    return session is not None and bool(sent) and hmac.compare_digest(session.csrf, str(sent))
