"""Wallet floors at admit: a prepaid agent is refused ``insufficient_funds`` before its wallet goes below its floor.

Issue 15 part 1 ("balances can have floors ... refused at admit and in the same transaction
as the reservation"). The wallets themselves (:mod:`comptroller.storage.transfers`) follow
the usage log after each settle, so they lag the ledger; a floor checked against them
would let every call in that lag through. So an agent with a floor has one more account
that the call path keeps exactly: the **floor row** (state kind ``limits``, key ``floor:`` and the
agent's wallet account name, ``agent:<ns|tenant|agent>``), read and written only inside
ledger transactions:

* ``floor_mc``: the floor, millicents (0 for a prepaid agent; None once removed: the row keeps
  counting, so a floor set again starts exact);
* ``funded_mc``: the net of every wallet transfer into and out of the account (deposits,
  fees earned, knowledge fees paid...), except its LLM costs (counted at settle, below);
* ``spend``: a :class:`~comptroller.domain.held_counts.HeldCount` of LLM cost: the
  ceilings of the agent's calls in flight (holds) and the cost of its settled calls.

Available = ``funded_mc - spend.settled - spend.held - floor_mc``; a call is admitted only
if its ceiling fits it (:func:`check`), and its hold is taken in the same transaction
(the admit guard, :mod:`comptroller.domain.limits`). The settle guard moves the hold to
``spend.settled`` at the actual cost in the settle's own transaction, so a settled cost
is at every moment either in a hold or in the spend, never in neither; an expired lease
is charged its ceiling until its settle corrects it (:mod:`comptroller.domain.held_counts`).

Transfers reach the row in the transfer store's own transaction (SQLite and PostgreSQL:
the same database; memory: a compare-and-set under the store's lock), through
:func:`apply_transfer`: a credit raises ``funded_mc``; a debit lowers it and is refused
``insufficient_funds`` if it would take the available amount below zero (so a knowledge
fee cannot spend money held by calls in flight). LLM-cost postings (kind ``llm_cost``, and
their adjustments) are skipped there: every engine's settle guard counted the cost already,
exactly once, when it was charged. When a floor is first set, ``funded_mc`` starts at the
wallet's balance as posted then (costs settled but not yet posted at that moment are
missed: set floors before traffic, or after ``comptroller wallet post``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.held_counts import HeldCount
from comptroller.domain.limit_rows import row_key
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import Level
from comptroller.domain.state import StateKey
from comptroller.domain.wallets.transfers import Transfer

__all__ = ["KIND_LLM", "WALLET_FLOOR", "FloorState", "apply_transfer", "check", "floor_key"]

WALLET_FLOOR = "floor"
"""The key prefix of floor rows (kind :data:`~comptroller.domain.limit_rows.KIND`)."""
KIND_LLM = "llm_cost"
"""The transfer kind of LLM-cost postings (:data:`comptroller.domain.wallets.postings.KIND_LLM`)."""


@dataclass(frozen=True, slots=True)
class FloorState:
    """An agent wallet's floor row (see the module docstring), millicents.

    Attributes:
        account: the wallet account (``agent:<ns|tenant|agent>``).
        floor_mc: the floor (None: removed, nothing is refused).
        funded_mc: the net of its transfers other than LLM costs (and of its balance when the row began).
        spend: LLM cost held by calls in flight and settled.
        version: the row's compare-and-set token (0: not stored).
    """

    account: str
    floor_mc: int | None
    funded_mc: int
    spend: HeldCount = field(default_factory=HeldCount)
    version: int = 0

    @property
    def available_mc(self) -> int:
        """What calls may still hold: funded - settled - held - floor (negative after a ceiling miss; no floor: 0)."""
        return self.funded_mc - self.spend.settled - self.spend.held - (self.floor_mc or 0)

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record."""
        return {"account": self.account, "floor_mc": self.floor_mc, "funded_mc": self.funded_mc,
                **self.spend.to_record()}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar], version: int) -> FloorState:
        """Read :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        account, floor, funded = (record.get(k) for k in ("account", "floor_mc", "funded_mc"))
        if not isinstance(account, str) or not (floor is None or type(floor) is int) or type(funded) is not int:
            raise ValueError(f"not a wallet floor record: {dict(record)!r:.200}")
        return cls(account, floor, funded, HeldCount.from_record(record, version), version)

    def with_spend(self, spend: HeldCount) -> FloorState:
        """This row with ``spend`` (and its version moved if it changed)."""
        return self if spend == self.spend else replace(self, spend=spend, version=self.version + 1)


def floor_key(account: str) -> StateKey:
    """The floor row of a wallet account."""
    return row_key(WALLET_FLOOR, account)


def check(state: FloorState, scope: str, ceiling_mc: int) -> Verdict | None:
    """None when ``ceiling_mc`` fits above the floor, else the ``insufficient_funds`` refusal (agent level)."""
    if state.floor_mc is None or ceiling_mc <= state.available_mc:
        return None
    return Verdict(
        code=Code.INSUFFICIENT_FUNDS, rule=Rule.WALLET, detector="floor", level=Level.AGENT, scope=scope,
        retry_after_s=None,
        evidence={"account": state.account, "floor_mc": state.floor_mc, "funded_mc": state.funded_mc,
                  "spent_mc": state.spend.settled, "held_mc": state.spend.held, "requested_mc": ceiling_mc,
                  "available_mc": state.available_mc},
        message=(f"insufficient_funds: wallet {state.account!r} has {format_usd(state.available_mc)} above its "
                 f"floor of {format_usd(state.floor_mc)} (funded {format_usd(state.funded_mc)}, spent "
                 f"{format_usd(state.spend.settled)}, held by calls in flight {format_usd(state.spend.held)}); "
                 f"this call's ceiling is {format_usd(ceiling_mc)}. Top up the wallet or lower max_tokens."))


def apply_transfer(state: FloorState, transfer: Transfer) -> FloorState | None:
    """The row after ``transfer`` touches its account, or None when a debit would go below the floor.

    An LLM-cost posting changes nothing (the settle counted it).
    """
    if transfer.kind == KIND_LLM:
        return state
    if transfer.credit_account == state.account:
        return replace(state, funded_mc=state.funded_mc + transfer.amount_mc, version=state.version + 1)
    if transfer.debit_account != state.account:
        return state
    if state.floor_mc is not None and transfer.amount_mc > state.available_mc:
        return None
    return replace(state, funded_mc=state.funded_mc - transfer.amount_mc, version=state.version + 1)
