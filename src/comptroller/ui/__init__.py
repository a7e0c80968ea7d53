"""The web UI (``/ui``): spend, budgets, defenses, requests and routing, server-rendered with htmx.

See :mod:`comptroller.ui.app` for the routes; :func:`ui_app` builds it for the gateway
(mounted at ``/ui``) and for ``comptroller ui``.
"""

from comptroller.ui.app import ui_app, ui_routes

__all__ = ["ui_app", "ui_routes"]
