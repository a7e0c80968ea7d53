"""Fixtures for the UI tests: a replayed ledger, a gateway on a copy of it, and Debian's Chromium.

The browser is ``/usr/bin/chromium`` driven by Playwright (``executable_path``; no browser is
ever downloaded). Without it the browser tests skip, saying so; the HTTP-level tests still run.
Every page a browser test opens is watched: a console error or a request to any host but the
gateway fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_kit import CHEAP, MODEL, POLICY, STRONG, TRACES, LoopbackServer, StubUpstream, UiGateway, gateway_policy

from comptroller.bootstrap import build_engine
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.storage.keys import SQLiteKeyStore, new_key

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def replayed_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite ledger filled by replaying the shipped ChatDev traces (once per session)."""
    db = tmp_path_factory.mktemp("seed") / "ledger.db"
    done = subprocess.run(
        [sys.executable, "-c", "from comptroller.cli.main import app; app()", "replay", str(TRACES),
         "--policy", str(POLICY), "--db", f"sqlite:///{db}"],
        capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert db.stat().st_size > 1_000_000, "the replay wrote no ledger"
    return db


@pytest.fixture(scope="session")
def stub() -> Iterator[StubUpstream]:
    """The gateway tests' stub upstream, for the session."""
    with StubUpstream() as server:
        yield server


GatewayFactory = Callable[..., UiGateway]


@pytest.fixture
def make_gateway(replayed_ledger: Path, stub: StubUpstream, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start a gateway on a copy of the replayed ledger, with ``[gateway]`` overrides; keys for an admin,
    tenant chatdev and tenant acme."""
    stub.control.reset()
    servers: list[LoopbackServer] = []

    def start(**overrides: Any) -> UiGateway:
        db = tmp_path / f"ledger{len(servers)}.db"
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(replayed_ledger) + suffix)
            if source.exists():
                shutil.copy(source, str(db) + suffix)
        policy = gateway_policy()
        engine = build_engine(db_url=f"sqlite:///{db}", policy=policy)
        keys = SQLiteKeyStore(db)
        config = GatewayConfig(**{"providers": {"stub": ProviderConfig(base_url=stub.base_url)},
                                  "models": {MODEL: "stub", CHEAP: "stub", STRONG: "stub"}, "admin_key_env": None,
                                  **overrides})
        app = create_app(engine=engine, keys=keys, config=config, namespace=policy.namespace,
                         routing=policy.routing_config(engine.prices))
        server = LoopbackServer(app).__enter__()
        servers.append(server)
        plain = {}
        for name, tenant, admin in (("admin", "ops", True), ("chatdev", "chatdev", False), ("acme", "acme", False)):
            record, plain[name] = new_key(tenant=tenant, admin=admin)
            keys.add(record)
        return UiGateway(url=server.url, engine=engine, keys=keys, stub=stub, admin_key=plain["admin"],
                         chatdev_key=plain["chatdev"], acme_key=plain["acme"], config=config)

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> UiGateway:
    """A gateway on a copy of the replayed ledger (see :func:`make_gateway`)."""
    return make_gateway()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (skips when /usr/bin/chromium or playwright is absent).

    Module-scoped: Playwright's sync API keeps an event loop running in the main thread while it is
    open, so it closes after each browser module and a later test can still call ``asyncio.run``
    (``tests/ui`` is no package, so a package scope would last the whole session).
    """
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], timeout=30_000)
        yield browser
        browser.close()


class Watch:
    """What a page did that a clean page does not: console errors and requests off the gateway."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.errors: list[str] = []
        self.external: list[str] = []

    def on_console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def on_request(self, request: Any) -> None:
        if not request.url.startswith((self.origin, "data:")):
            self.external.append(request.url)


@pytest.fixture
def page_on(browser: Any) -> Iterator[Callable[[str], Any]]:
    """Open a fresh browser page watched for ``origin``; fails the test on a console error or a request off it."""
    opened: list[tuple[Any, Watch]] = []

    def open_page(origin: str) -> Any:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        context.set_default_timeout(15_000)
        watch = Watch(origin)
        page = context.new_page()
        page.on("console", watch.on_console)
        page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
        page.on("request", watch.on_request)
        page.watch = watch
        opened.append((context, watch))
        return page

    yield open_page
    for context, watch in opened:
        context.close()
        assert watch.errors == [], f"console errors: {watch.errors}"
        assert watch.external == [], f"requests off the origin: {watch.external}"


@pytest.fixture
def page(page_on: Callable[[str], Any], gateway: UiGateway) -> Any:
    """A fresh browser page on the gateway; fails the test on a console error or an external request."""
    return page_on(gateway.url)
