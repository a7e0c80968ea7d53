"""A wallet floor through the SDK: InsufficientFundsError before the provider is called."""

from __future__ import annotations

from datetime import UTC, datetime

import openai
import pytest
from sdk_kit import MODEL
from stub_upstream import StubUpstream

from comptroller.domain.codes import Code
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.wallets.accounts import agent_wallet, external_account
from comptroller.domain.wallets.transfers import Transfer
from comptroller.sdk import Comptroller
from comptroller.sdk.errors import InsufficientFundsError
from comptroller.storage.transfers_sqlite import SQLiteTransferStore

MESSAGES = [{"role": "user", "content": "Name five colours."}]


def test_a_prepaid_agent_at_its_floor_gets_insufficient_funds(stub: StubUpstream, comptroller: Comptroller) -> None:
    """Floor 0 and an empty wallet: the wrapped client raises InsufficientFundsError (agent level) and sends
    nothing; after a deposit the same call is served."""
    wallet = agent_wallet(Attribution(namespace="sdk", tenant="acme", agent="writer"))
    wallets = SQLiteTransferStore(comptroller.engine.store.path)  # type: ignore[attr-defined]
    try:
        wallets.set_floor(wallet, 0)
        client = comptroller.wrap(openai.OpenAI(base_url=stub.base_url, api_key="unused", max_retries=0),
                                  agent="writer")
        with pytest.raises(InsufficientFundsError) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert caught.value.verdict.code is Code.INSUFFICIENT_FUNDS and caught.value.verdict.level is Level.AGENT
        assert caught.value.verdict.evidence["account"] == wallet
        assert stub.control.requests == []
        wallets.create_transfers([Transfer("dep", external_account("bank"), wallet, 1_000_000, "deposit",
                                           datetime.now(UTC))])
        response = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert response.usage is not None and len(stub.control.requests) == 1
    finally:
        wallets.close()
