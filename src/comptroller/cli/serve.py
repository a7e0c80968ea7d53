"""``comptroller serve`` (the gateway) and ``comptroller key create | import | list | revoke``.

Registered on the main app by :func:`register`. ``serve`` validates the config file
and the provider keys in the parent process, so a mistake is one message and exit
status 2 before any worker starts; then uvicorn runs
:func:`comptroller.gateway.app.app_from_env` in each of ``--workers`` processes, all on
one ledger. The workers learn from the environment how many they are and where to list
themselves (``/healthz`` is ready when all are up), and the parent's pid, so they exit
when it dies (:mod:`comptroller.gateway.lifecycle`). On SIGTERM, calls in flight get
``[gateway] shutdown_grace_s``; uvicorn's own limit is set later, so it never cuts first.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.table import Table

from comptroller.cli.common import DEFAULT_DB, DbOption, console, err, user_errors
from comptroller.cli.defenses_summary import print_defenses, warn_unbudgeted_tenants
from comptroller.config import ConfigError
from comptroller.gateway.approval_callback import approval_secret
from comptroller.gateway.config import load_gateway_config
from comptroller.gateway.lifecycle import ENV_PARENT_PID, ENV_RUN_DIR, ENV_WORKERS
from comptroller.storage import StoreURLError
from comptroller.storage.key_stores import keys_from_url
from comptroller.storage.keys import ApiKey, ApiKeyError, imported_key, new_key, provision

__all__ = ["key_app", "register", "serve_command"]

key_app = typer.Typer(help="Create, list and revoke gateway API keys (stored hashed beside the ledger).",
                      no_args_is_help=True)
# RuntimeError: PostgreSQL's LedgerUnavailableError and SchemaVersionError (say what to run)
_user_errors = user_errors(ConfigError, ApiKeyError, StoreURLError, FileNotFoundError, ValueError, RuntimeError)


@_user_errors
def serve_command(
    config: Annotated[Path | None, typer.Option("--config", envvar="COMPTROLLER_CONFIG", exists=True, dir_okay=False,
                                                help="Policy TOML with a [gateway] table")] = None,
    db: DbOption = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8787,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes (one ledger for all)")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the OpenAI-compatible gateway: point any OpenAI client's base_url at http://HOST:PORT/v1."""
    if db.startswith("memory:") and workers > 1:
        raise ValueError("a memory:// ledger cannot be shared by several workers; use --db sqlite:///ledger.db")
    policy, gateway = load_gateway_config(config)
    # uvicorn cancels what still runs after its limit: later than the gateway's own cut-off, which
    # charges cut-off calls at their bound first (the cut-off's ledger calls take <= ledger_timeout_s)
    uvicorn_grace_s = math.ceil(gateway.shutdown_grace_s + gateway.ledger_timeout_s) + 2
    for provider in gateway.providers.values():
        provider.api_key()  # a missing provider key is an error now, not in every worker
    approval_secret()  # a malformed COMPTROLLER_APPROVAL_SECRET stops serve, not each worker
    if not gateway.providers:
        err.print("warning: no [gateway.providers] configured; every chat call will answer 400", markup=False,
                  highlight=False)
    os.environ["COMPTROLLER_DB"] = db
    if config is not None:
        os.environ["COMPTROLLER_CONFIG"] = str(config.resolve())
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="comptroller-metrics-")
    console.print(f"comptroller gateway on http://{host}:{port}/v1 ({workers} worker(s), ledger {db})")
    print_defenses(console, policy.defenses())  # issue 13: what is on, and tenants no budget bounds
    warn_unbudgeted_tenants(err, db, namespace=policy.namespace, budgets=policy.budget_list())
    with tempfile.TemporaryDirectory(prefix="comptroller-run-") as run_dir:
        os.environ.update({ENV_WORKERS: str(workers), ENV_RUN_DIR: run_dir, ENV_PARENT_PID: str(os.getpid())})
        uvicorn.run("comptroller.gateway.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=False, timeout_graceful_shutdown=uvicorn_grace_s)


_Tenant = Annotated[str, typer.Option(help="The tenant every call with this key is attributed to")]
_Agent = Annotated[str | None, typer.Option(help="Bind the key to one agent")]
_Name = Annotated[str, typer.Option(help="A label for people")]
_Models = Annotated[list[str] | None, typer.Option("--model", help="A model the key may call (repeat)")]
_Admin = Annotated[bool, typer.Option("--admin", help="An admin key (admin API only)")]


def _describe(record: ApiKey) -> str:
    return (f"key {record.id} for tenant {record.tenant!r}" + (f", agent {record.agent!r}" if record.agent else "")
            + (" (admin)" if record.admin else ""))


def _provision(plaintext: str, where: str, *, tenant: str, agent: str | None, name: str, admin: bool,
               models: list[str] | None, db: str) -> None:
    """Store a known key (from the environment or stdin); say whether it was added or already there."""
    try:
        record = imported_key(plaintext, tenant=tenant, agent=agent, name=name, admin=admin,
                              models=tuple(models) if models else None)
    except ApiKeyError as exc:
        raise ApiKeyError(f"{where}: {exc}") from None
    keys = keys_from_url(db)
    try:
        added = provision(keys, record)
    finally:
        keys.close()
    console.print(_describe(record) + (" provisioned" if added else " already provisioned: nothing changed"))


@key_app.command("create")
@_user_errors
def key_create(
    tenant: _Tenant,
    agent: _Agent = None,
    name: _Name = "",
    model: _Models = None,
    admin: _Admin = False,
    secret_env: Annotated[str | None, typer.Option(
        "--secret-env", metavar="VAR",
        help="Provision the known key held in this environment variable (ck-<id>.<secret>) instead of a "
             "random one; nothing is printed")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    if secret_env is not None:
        value = os.environ.get(secret_env)
        if value is None:
            raise ApiKeyError(f"the environment variable {secret_env} is not set; export it with the key "
                              "(ck-<id>.<secret>), or leave --secret-env out for a random key")
        _provision(value, f"${secret_env}", tenant=tenant, agent=agent, name=name, admin=admin, models=model, db=db)
        return
    record, plaintext = new_key(tenant=tenant, agent=agent, name=name, admin=admin,
                                models=tuple(model) if model else None)
    keys = keys_from_url(db)
    try:
        keys.add(record)
    finally:
        keys.close()
    console.print(_describe(record) + "; store it now, it is not shown again:")
    print(plaintext)


@key_app.command("import")
@_user_errors
def key_import(tenant: _Tenant, agent: _Agent = None, name: _Name = "", model: _Models = None,
               admin: _Admin = False, db: DbOption = DEFAULT_DB) -> None:
    """Provision a known key read from stdin (one line, ck-<id>.<secret>); running it again is a no-op."""
    text = sys.stdin.read(4096)
    lines = text.splitlines()
    if len(lines) > 1 and any(line.strip() for line in lines[1:]):
        raise ApiKeyError("stdin: send one key on one line (ck-<id>.<secret>), not several lines")
    _provision(lines[0] if lines else "", "stdin", tenant=tenant, agent=agent, name=name, admin=admin,
               models=model, db=db)


@key_app.command("list")
@_user_errors
def key_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None,
             db: DbOption = DEFAULT_DB) -> None:
    """List keys (never the secrets)."""
    keys = keys_from_url(db)
    try:
        records = keys.keys(tenant)
    finally:
        keys.close()
    table = Table(title="API keys")
    table.add_column("id", no_wrap=True, min_width=12)
    for column in ("tenant", "agent", "name", "admin", "models", "created", "revoked"):
        table.add_column(column, overflow="fold")
    for k in records:
        table.add_row(k.id, k.tenant, k.agent or "*", k.name, "yes" if k.admin else "",
                      ", ".join(k.models) if k.models else "*", k.created_at.strftime("%Y-%m-%d"),
                      k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "")
    console.print(table)


@key_app.command("revoke")
@_user_errors
def key_revoke(key_id: Annotated[str, typer.Argument(help="The key id, as `key list` shows")],
               db: DbOption = DEFAULT_DB) -> None:
    """Revoke a key; calls with it get 401 from then on."""
    keys = keys_from_url(db)
    try:
        found = keys.revoke(key_id, datetime.now(UTC))
    finally:
        keys.close()
    if not found:
        raise ApiKeyError(f"no key {key_id!r}; `comptroller key list` shows the ids")
    console.print(f"key {key_id} revoked")


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``key`` to the main CLI."""
    app.command("serve")(serve_command)
    app.add_typer(key_app, name="key")
