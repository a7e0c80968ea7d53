"""The gateway's own ``/ui/wallets`` (``app_from_env``, what ``comptroller serve`` runs) reads the transfers
beside its ledger, like ``comptroller ui --db`` does."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from comptroller.domain.wallets.transfers import Transfer
from comptroller.gateway.app import app_from_env
from comptroller.storage.transfer_stores import transfers_from_url

ADMIN_KEY = "ck-gatewayadmin.0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"


def test_the_gateways_wallets_page_shows_the_ledgers_wallets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = transfers_from_url(db)
    store.create_transfers([Transfer("dep-1", "external:bank", "agent:ns|acme|writer", 123_456, "deposit",
                                     datetime.now(UTC))])
    store.close()
    monkeypatch.setenv("COMPTROLLER_DB", db)
    monkeypatch.delenv("COMPTROLLER_CONFIG", raising=False)
    monkeypatch.setenv("COMPTROLLER_ADMIN_KEY", ADMIN_KEY)
    with TestClient(app_from_env(), follow_redirects=False) as client:
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/login").text)
        assert token is not None
        assert client.post("/ui/login", data={"key": ADMIN_KEY, "csrf": token.group(1)}).status_code == 303
        page = client.get("/ui/wallets")
    assert page.status_code == 200
    assert "no wallet store" not in page.text.lower()
    assert "agent:ns|acme|writer" in page.text.replace("&#124;", "|")
    assert "$1.23456" in page.text  # the deposit, 123,456 mc, as the balance
