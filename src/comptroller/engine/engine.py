"""The one path of a call: admit (price the ceiling, reserve on every budget) -> settle or release.

Every edge (replay now; the SDK and the gateway later) calls :meth:`Engine.admit`
before the provider and exactly one of :meth:`Engine.settle` or
:meth:`Engine.release` after it. The engine reads time only from its injected
:class:`~comptroller.ports.Clock`, so replay runs in the recorded (virtual) time.

The ceiling of a call is ``ceiling_mc(price, input_tokens_max, output_tokens_max)``
(:mod:`comptroller.domain.pricing`), with the output bound from
:class:`~comptroller.domain.caps.OutputCaps`. The settled cost is priced at the
time of admission, with the model of the reservation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Verdict
from comptroller.domain.ledger import Event, ReleaseResult, Reservation, ReserveRequest, SettleResult
from comptroller.domain.pricing import ceiling_mc, cost_mc
from comptroller.domain.refusals import Refusal
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.ports import Clock, LedgerStore, PriceSource

__all__ = ["Admission", "CallRequest", "Engine"]


@dataclass(frozen=True, slots=True)
class CallRequest:
    """A call about to be made.

    Attributes:
        attribution: who the call is for.
        model: the requested model label (aliases apply).
        input_tokens_max: an upper bound on the input tokens (replay: the recorded
            count; live calls: :func:`comptroller.domain.tokens.input_tokens_upper_bound`).
        max_tokens: the requested output limit, if any (the cap may lower it).
        idempotency_key: the caller's id for this call (default: a new UUID).
        ttl_s: the lease length, seconds (default: the engine's).
        run_id: the scheduled run (heartbeat, cron job) the call belongs to, if any;
            its deadline applies (open it first with ``Engine.open_run``).
        attempt_id: the attempt of the task this call belongs to (a scheduler's run id,
            a retry counter); each new attempt id of a task counts against the re-attempt
            limit (default: ``run_id``, else no counting).
        fingerprint: :func:`comptroller.domain.defenses.similarity.fingerprint` of the model
            and messages, for the same-request loop detector (None: detector skipped).
        text: what the agent adds in this turn (its last message), for the alternation and
            near-duplicate detectors (None: skipped).
    """

    attribution: Attribution
    model: str
    input_tokens_max: int
    max_tokens: int | None = None
    idempotency_key: str | None = None
    ttl_s: float | None = None
    run_id: str | None = None
    attempt_id: str | None = None
    fingerprint: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """The engine's answer to :meth:`Engine.admit`.

    Attributes:
        code: ``ok`` or ``already_reserved`` when admitted, else the refusal's code.
        model: the resolved (priced) model id.
        output_tokens_max: the output bound used, tokens (send it upstream as ``max_tokens``).
        ceiling_mc: the amount held, millicents.
        reservation: the lease, when admitted.
        refusal: the budget's numbers, when a budget refused.
        verdict: why not, when refused by any rule (the one shape every edge renders:
            ``code``, ``rule``, ``detector``, ``level``, ``scope``, ``message``,
            ``retry_after_s``, ``evidence``).
    """

    code: Code
    model: str
    output_tokens_max: int
    ceiling_mc: int
    reservation: Reservation | None = None
    refusal: Refusal | None = None
    verdict: Verdict | None = None

    @property
    def admitted(self) -> bool:
        """True if the call may go ahead."""
        return self.reservation is not None


class Engine:
    """Composes pricing, output caps and the ledger for one call.

    Args:
        store: the ledger.
        prices: the price source (aliases and overrides included).
        clock: the time source.
        caps: per-turn output caps.
        ttl_s: default lease length, seconds.
    """

    def __init__(self, *, store: LedgerStore, prices: PriceSource, clock: Clock,
                 caps: OutputCaps | None = None, ttl_s: float = 600.0) -> None:
        self.store = store
        self.prices = prices
        self.clock = clock
        self.caps = caps or OutputCaps()
        self.ttl_s = ttl_s

    def admit(self, call: CallRequest) -> Admission:
        """Price the call's ceiling and reserve it on every applicable budget, or refuse.

        Raises:
            UnknownModelError: for a model without a price.
            NoOutputCapError: when nothing bounds the output.
            ValueError: on negative token bounds.
        """
        now = self.clock.now()
        model = self.prices.resolve(call.model)
        price = self.prices.price(model, now)
        output_max = self.caps.output_tokens_max(agent=call.attribution.agent, requested=call.max_tokens,
                                                 price=price, input_tokens_max=call.input_tokens_max)
        ceiling = ceiling_mc(price, input_tokens_max=call.input_tokens_max, output_tokens_max=output_max)
        request = ReserveRequest(
            idempotency_key=call.idempotency_key or uuid.uuid4().hex,
            attribution=call.attribution, model=model, ceiling_mc=ceiling,
            input_tokens_max=call.input_tokens_max, output_tokens_max=output_max,
            ttl_s=call.ttl_s or self.ttl_s,
        )
        result = self.store.reserve(request, now)
        if result.refusal is not None:
            self.store.record_event(_refusal_event(result.refusal, call.attribution, model, now))
        return Admission(code=result.code, model=model, output_tokens_max=output_max, ceiling_mc=ceiling,
                         reservation=result.reservation, refusal=result.refusal,
                         verdict=None if result.refusal is None else Verdict.from_refusal(result.refusal))

    def settle(self, reservation: Reservation, usage: Usage) -> SettleResult:
        """Charge the actual cost (priced at admission time) and return the rest of the hold.

        Idempotent: a second settle answers ``already_settled`` and charges nothing.
        """
        price = self.prices.price(reservation.model, reservation.created_at)
        return self.store.settle(reservation.id, usage, cost_mc(price, usage), self.clock.now())

    def release(self, reservation: Reservation) -> ReleaseResult:
        """Return the whole hold: the call failed or was abandoned."""
        return self.store.release(reservation.id, self.clock.now())


def _refusal_event(refusal: Refusal, attribution: Attribution, model: str, now: datetime) -> Event:
    return Event(
        ts=now, kind="refusal", code=str(refusal.code), level=str(refusal.level), scope=refusal.scope,
        detail={
            "budget_id": refusal.budget_id, "limit_mc": refusal.limit_mc, "settled_mc": refusal.settled_mc,
            "reserved_mc": refusal.reserved_mc, "requested_mc": refusal.requested_mc, "model": model,
            "agent": attribution.agent, "conversation": attribution.conversation, "task": attribution.task,
            "phase": attribution.phase,
        },
    )
