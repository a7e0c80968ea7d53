"""A wallet floor through the gateway: the official openai client gets insufficient_funds before anything is sent."""

from __future__ import annotations

from datetime import UTC, datetime

import openai
import pytest
from gateway_kit import MODEL, GatewayFactory

from comptroller.domain.scopes import Attribution
from comptroller.domain.wallets.accounts import agent_wallet, external_account
from comptroller.domain.wallets.floors import FloorState, floor_key
from comptroller.domain.wallets.transfers import Transfer, TransferCode
from comptroller.storage.transfers_sqlite import SQLiteTransferStore

MESSAGES = [{"role": "user", "content": "Name five colours."}]


def test_a_prepaid_agent_at_its_floor_is_refused_insufficient_funds(make_gateway: GatewayFactory) -> None:
    """Floor 0 and 1 mc in the wallet: the call is a 429 insufficient_funds (not retried, nothing sent upstream);
    after a deposit it is served, and the floor row holds its settled cost."""
    gw = make_gateway()
    key = gw.new_key(agent="writer")
    wallet = agent_wallet(Attribution(namespace="test", tenant="acme", agent="writer"))
    wallets = SQLiteTransferStore(gw.engine.store.path)  # type: ignore[attr-defined]
    try:
        wallets.set_floor(wallet, 0)
        deposit = Transfer("dep-1", external_account("bank"), wallet, 1, "deposit", datetime.now(UTC))
        assert wallets.create_transfers([deposit])[0].code is TransferCode.OK
        client = gw.client(key)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        error = caught.value.body
        assert isinstance(error, dict) and error["code"] == "insufficient_funds" and error["param"] == "agent"
        assert error["type"] == "insufficient_quota" and error["evidence"]["available_mc"] == 1
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert "retry-after" not in caught.value.response.headers
        assert gw.stub.control.requests == []
        top_up = Transfer("dep-2", external_account("bank"), wallet, 1_000_000, "deposit", datetime.now(UTC))
        assert wallets.create_transfers([top_up])[0].code is TransferCode.OK
        client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        (record,) = gw.engine.store.usage_records()
        stored = gw.engine.store.state(floor_key(wallet))
        assert stored is not None
        row = FloorState.from_record(stored.record, stored.version)
        assert (row.funded_mc, row.spend.settled, row.spend.held) == (1_000_001, record.cost_mc, 0)
    finally:
        wallets.close()
