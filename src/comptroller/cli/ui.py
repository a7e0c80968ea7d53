"""``comptroller ui``: the web UI on a ledger, without a gateway.

The same pages the gateway serves at ``/ui`` (:mod:`comptroller.ui`), for a ledger
filled by replays, the SDK or gateways elsewhere. Log in with a stored admin or tenant
key (``comptroller key create``) or the admin key in ``COMPTROLLER_ADMIN_KEY``. The
Wallets page reads the transfers beside the ledger and flags P&L rows below the policy's
``fees.margin_floor``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from starlette.applications import Starlette

from comptroller.bootstrap import build_engine
from comptroller.cli.common import DEFAULT_DB, DbOption, console, user_errors
from comptroller.config import ConfigError, load_policy
from comptroller.storage import StoreURLError
from comptroller.storage.key_stores import keys_from_url
from comptroller.storage.transfer_stores import transfers_from_url
from comptroller.ui import ui_routes

__all__ = ["register", "ui_command"]

ADMIN_KEY_ENV = "COMPTROLLER_ADMIN_KEY"
_user_errors = user_errors(ConfigError, StoreURLError, FileNotFoundError, ValueError, RuntimeError)


def ui_app_for(db: str, policy_path: Path | None) -> Starlette:
    """The UI on the ledger at ``db`` (mounted at ``/ui``, ``/`` redirecting to it).

    Raises:
        ConfigError: an invalid policy file.
        StoreURLError: an unknown ledger URL.
    """
    policy = load_policy(policy_path)
    engine = build_engine(db_url=db, policy=policy)
    keys = keys_from_url(db)
    fees = policy.fees.schedule() if policy.fees else None
    return Starlette(routes=ui_routes(engine=engine, keys=keys, namespace=policy.namespace,
                                      admin_key=os.environ.get(ADMIN_KEY_ENV) or None,
                                      transfers=transfers_from_url(db),
                                      margin_floor=None if fees is None else fees.margin_floor))


@_user_errors
def ui_command(
    db: DbOption = DEFAULT_DB,
    policy: Annotated[Path | None, typer.Option("--policy", envvar="COMPTROLLER_CONFIG", exists=True,
                                                dir_okay=False, help="Policy TOML (its namespace, "
                                                "fees.margin_floor)")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8788,
) -> None:
    """Serve the web UI on a ledger: open http://HOST:PORT/ui and log in with an API key."""
    app = ui_app_for(db, policy)
    console.print(f"comptroller UI on http://{host}:{port}/ui (ledger {db})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    """Add ``ui`` to the main CLI."""
    app.command("ui")(ui_command)
