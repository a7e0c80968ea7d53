"""Transfer result codes: a table of (transfer, stored state, expected code) in TigerBeetle's precedence."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from comptroller.domain.wallets.transfers import AccountBalance, Transfer, TransferCode, decide

T0 = datetime(2026, 3, 1, tzinfo=UTC)
GOOD = Transfer(id="t1", debit_account="tenant:ns|acme", credit_account="agent:ns|acme|writer", amount_mc=500,
                kind="service_fee", ts=T0)

CASES = [
    ("ok", GOOD, None, None, TransferCode.OK),
    ("empty id", replace(GOOD, id=""), None, None, TransferCode.ID_MUST_NOT_BE_EMPTY),
    ("long id", replace(GOOD, id="x" * 257), None, None, TransferCode.ID_TOO_LONG),
    ("empty account", replace(GOOD, credit_account=""), None, None, TransferCode.ACCOUNT_MUST_NOT_BE_EMPTY),
    ("same accounts", replace(GOOD, credit_account=GOOD.debit_account), None, None,
     TransferCode.ACCOUNTS_MUST_BE_DIFFERENT),
    ("zero amount", replace(GOOD, amount_mc=0), None, None, TransferCode.AMOUNT_MUST_BE_POSITIVE),
    ("negative amount", replace(GOOD, amount_mc=-3), None, None, TransferCode.AMOUNT_MUST_BE_POSITIVE),
    ("empty kind", replace(GOOD, kind=""), None, None, TransferCode.KIND_MUST_NOT_BE_EMPTY),
    ("replay", GOOD, GOOD, None, TransferCode.EXISTS),
    ("replay later", replace(GOOD, ts=T0 + timedelta(hours=1)), GOOD, None, TransferCode.EXISTS),
    ("retry, other amount", replace(GOOD, amount_mc=501), GOOD, None, TransferCode.EXISTS_WITH_DIFFERENT_FIELDS),
    ("retry, other account", replace(GOOD, credit_account="agent:x"), GOOD, None,
     TransferCode.EXISTS_WITH_DIFFERENT_FIELDS),
    ("retry, other ref", replace(GOOD, ref="r"), GOOD, None, TransferCode.EXISTS_WITH_DIFFERENT_FIELDS),
    ("below floor", GOOD, None, AccountBalance(GOOD.debit_account, credits_mc=499, floor_mc=0),
     TransferCode.INSUFFICIENT_FUNDS),
    ("down to floor", GOOD, None, AccountBalance(GOOD.debit_account, credits_mc=500, floor_mc=0), TransferCode.OK),
    ("negative floor (credit line)", GOOD, None, AccountBalance(GOOD.debit_account, floor_mc=-500), TransferCode.OK),
    ("no floor", GOOD, None, AccountBalance(GOOD.debit_account, debits_mc=10**9), TransferCode.OK),
    ("replay beats floor", GOOD, GOOD, AccountBalance(GOOD.debit_account, floor_mc=0), TransferCode.EXISTS),
    ("validation beats replay", replace(GOOD, amount_mc=0), GOOD, None, TransferCode.AMOUNT_MUST_BE_POSITIVE),
]


@pytest.mark.parametrize(("name", "transfer", "existing", "debit", "expected"), CASES, ids=[c[0] for c in CASES])
def test_code_table(name: str, transfer: Transfer, existing: Transfer | None, debit: AccountBalance | None,
                    expected: TransferCode) -> None:
    """Each transfer gets the first code that applies, in the enum's order of precedence."""
    assert decide(transfer, existing, debit) is expected


def test_precedence_is_the_enum_order() -> None:
    """A transfer breaking several rules gets the earliest: empty id beats same accounts beats zero amount."""
    bad = replace(GOOD, id="", credit_account=GOOD.debit_account, amount_mc=0)
    assert decide(bad, None, None) is TransferCode.ID_MUST_NOT_BE_EMPTY
    assert decide(replace(bad, id="x"), None, None) is TransferCode.ACCOUNTS_MUST_BE_DIFFERENT
    order = list(TransferCode)
    assert order.index(TransferCode.EXISTS) < order.index(TransferCode.INSUFFICIENT_FUNDS) < order.index(
        TransferCode.OK)
