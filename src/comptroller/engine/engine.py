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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.defenses.chain import AdmitDefenses, CallFacts, Defenses, ParsedStates, SettleDefenses
from comptroller.domain.defenses.deadline import RunKind, ScheduledRun, run_key
from comptroller.domain.defenses.pacing import PaceAction
from comptroller.domain.defenses.pinning import PinningPolicy, Route, RouteReason, cheaper_models, route_request
from comptroller.domain.defenses.verdict import Verdict
from comptroller.domain.ledger import (
    Event,
    ReleaseResult,
    Reservation,
    ReserveRequest,
    ReserveResult,
    SettleOutcome,
    SettleResult,
    UsageRecord,
)
from comptroller.domain.limit_book import LimitBook, LimitsChanged, book_key
from comptroller.domain.limits import Limits
from comptroller.domain.pricing import ceiling_mc, cost_mc
from comptroller.domain.refusals import Refusal
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.state import AdmitGuard, StoredState
from comptroller.domain.usage import Usage
from comptroller.engine.recount import InputRecount, RecountGuard, RecountNeeded
from comptroller.notify.sink import FanOut
from comptroller.ports import Clock, EventSink, LedgerStore, PriceSource

__all__ = ["Admission", "CallRequest", "Engine"]

_BOOK_READS_MAX = 3
"""Reads of a namespace's limit book one admission makes when it keeps changing (then its error stands)."""


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
        choices: outputs the call generates (OpenAI ``n``): the output bound is reserved this
            many times (the ceiling is input + choices x output bound, and the reservation's
            ``output_tokens_max`` is the total; send ``output_tokens_max // choices`` upstream).
        output_tokens_extra: output tokens reserved beyond the bound sent upstream: OpenAI bills
            a Predicted Output's rejected tokens as completion tokens ("Predicted Outputs");
            send ``(output_tokens_max - output_tokens_extra) // choices`` upstream.
        sends: the call goes upstream right after admission (the gateway, the SDK): the
            reservation is marked sent, so a lease that expires unresolved is charged its
            ceiling as ``unknown_outcome`` (DESIGN.md rule 12). Release it if the call is not sent.
        message_id: the group message the call answers; in a strict group only its dispatched
            members may call (default: the group's latest dispatched message).
        input_recount: for a priced model id, a tighter upper bound on the input tokens (an exact
            tokenizer's count: :func:`comptroller.exact_input.input_recount`), for the models it
            ``covers``. Asked only near a budget's edge, where the ceiling on ``input_tokens_max``
            leaves little room (:mod:`comptroller.engine.recount`); None (the default): ``input_tokens_max`` only.
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
    choices: int = 1
    output_tokens_extra: int = 0
    sends: bool = False
    message_id: str | None = None
    input_recount: InputRecount | None = None


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
        route: where the call went and why (pinning, a paced downgrade), when admitted or
            refused after pinning.
        remaining_mc: when admitted, the least money any of the call's budgets has left with
            this ceiling held, millicents (None: no budget applies, or an idempotent repeat).
    """

    code: Code
    model: str
    output_tokens_max: int
    ceiling_mc: int
    reservation: Reservation | None = None
    refusal: Refusal | None = None
    verdict: Verdict | None = None
    route: Route | None = None
    remaining_mc: int | None = None

    @property
    def admitted(self) -> bool:
        """True if the call may go ahead."""
        return self.reservation is not None


class Engine:
    """Composes pricing, output caps, the runtime defenses and the ledger for one call.

    Args:
        store: the ledger (it also keeps the defenses' state).
        prices: the price source (aliases and overrides included).
        clock: the time source.
        caps: per-turn output caps.
        ttl_s: default lease length, seconds.
        defenses: the runtime defenses (default: budgets only; policies switch them on).
        sinks: subscribers told of every event a call appends (refusals, trips, alerts), after commit.
        on_settled: called with each usage row a settle or delivery writes, after commit (wallet
            posting: :class:`comptroller.wallet_posting.WalletPosting`); a hook must not raise.
        limits: rate limits and quotas (:mod:`comptroller.domain.limits`; default none); wallet
            floors are checked always.
    """

    def __init__(self, *, store: LedgerStore, prices: PriceSource, clock: Clock,
                 caps: OutputCaps | None = None, ttl_s: float = 600.0, defenses: Defenses | None = None,
                 sinks: Sequence[EventSink] = (), on_settled: Sequence[Callable[[UsageRecord], None]] = (),
                 limits: Limits | None = None) -> None:
        self.store = store
        self.prices = prices
        self.clock = clock
        self.caps = caps or OutputCaps()
        self.ttl_s = ttl_s
        self.defenses = defenses or Defenses.budgets_only()
        self.sinks = FanOut(list(sinks))
        self._parsed = ParsedStates()
        self._settle_guard = SettleDefenses(self.defenses, self._parsed)
        self.on_settled = list(on_settled)
        self.limits = limits or Limits()

    def admit(self, call: CallRequest) -> Admission:
        """Run every defense in the fixed order, then reserve the ceiling on every budget, or refuse.

        One store transaction decides: an idempotency key seen before is answered
        first (``already_reserved``), then kill switch, pinning, deadline, loop,
        breaker and pacing (:mod:`comptroller.domain.defenses.order`), then the budgets.
        A call with an ``input_recount`` near a budget's edge is reserved on its recounted input
        instead (:mod:`comptroller.engine.recount`).

        Raises:
            UnknownModelError: for a model without a price.
            NoOutputCapError: when nothing bounds the output.
            ValueError: on negative token bounds.
        """
        key = call.idempotency_key or uuid.uuid4().hex
        if call.input_recount is None:
            return self._admit(call, key, recount=False)
        try:
            admission = self._admit(call, key, recount=True)
        except RecountNeeded as needed:
            return self._admit(_recounted(call, needed.models), key, recount=False)
        if admission.code is Code.IDEMPOTENCY_CONFLICT:  # a retry of a call admitted on its recounted bound
            return self._admit(_recounted(call, [admission.model]), key, recount=False)
        return admission

    def _admit(self, call: CallRequest, key: str, *, recount: bool) -> Admission:
        now = self.clock.now()
        requested = self.prices.resolve(call.model)
        route = self._route(call.attribution, requested)
        model = route.model if isinstance(route, Route) else requested
        requests = {model: self._request(call, model, key, now)}
        if isinstance(route, Route):
            requests.update(self._downgrades(call, requests[model], key, now))
        facts = CallFacts(call_id=key, attribution=call.attribution, route=route, requests=requests,
                          run_id=call.run_id, attempt_id=call.attempt_id or call.run_id,
                          fingerprint=call.fingerprint, text=call.text, message_id=call.message_id)
        guard: AdmitDefenses | RecountGuard = AdmitDefenses(self.defenses, facts, self._parsed)
        if recount and call.input_recount is not None and all(map(call.input_recount.covers, requests)):
            guard = RecountGuard(guard, requests[model], list(requests), self._output_floor_mc)
        result = self._reserve(requests[model], now, guard)
        self._publish(result.events)
        held = requests.get(result.reservation.model, requests[model]) if result.reservation else requests[model]
        return Admission(code=result.code, model=held.model, output_tokens_max=held.output_tokens_max,
                         ceiling_mc=held.ceiling_mc, reservation=result.reservation, refusal=result.refusal,
                         verdict=result.verdict, route=_route_taken(route, held.model),
                         remaining_mc=result.remaining_mc)

    def _reserve(self, request: ReserveRequest, now: datetime, guard: AdmitGuard) -> ReserveResult:
        """Reserve under the limits' guard; when a namespace's limit book changed meanwhile, read it and retry."""
        for _ in range(_BOOK_READS_MAX):
            try:
                return self.store.reserve(request, now, self.limits.admit(guard, request, now))
            except LimitsChanged as changed:
                stored = self.store.state(book_key(changed.namespace))
                book = LimitBook() if stored is None else LimitBook.from_record(stored.record, stored.version)
                self.limits.refresh(changed.namespace, book)
        return self.store.reserve(request, now, self.limits.admit(guard, request, now))

    def _output_floor_mc(self, request: ReserveRequest, now: datetime) -> int:
        """The least ceiling a recount could give ``request``: its output bound with no input, millicents."""
        price = self.prices.price(request.model, now)
        return ceiling_mc(price, input_tokens_max=0, output_tokens_max=request.output_tokens_max)

    def _route(self, attribution: Attribution, model: str) -> Route | Verdict:
        pinning = self.defenses.pinning
        if pinning is None:
            return Route(model, model, RouteReason.UNPINNED, "no model pins are configured")
        agent_scope = dict(attribution.scopes())[Level.AGENT]
        return route_request(pinning, agent=attribution.agent, scope=agent_scope, model=model)

    def _request(self, call: CallRequest, model: str, key: str, now: datetime) -> ReserveRequest:
        price = self.prices.price(model, now)
        output_max = self.caps.output_tokens_max(agent=call.attribution.agent, requested=call.max_tokens,
                                                 price=price, input_tokens_max=call.input_tokens_max)
        output_max = output_max * call.choices + call.output_tokens_extra  # n outputs, each within the bound
        ceiling = ceiling_mc(price, input_tokens_max=call.input_tokens_max, output_tokens_max=output_max)
        return ReserveRequest(idempotency_key=key, attribution=call.attribution, model=model, ceiling_mc=ceiling,
                              input_tokens_max=call.input_tokens_max, output_tokens_max=output_max,
                              ttl_s=call.ttl_s or self.ttl_s, sends=call.sends)

    def _downgrades(self, call: CallRequest, routed: ReserveRequest, key: str,
                    now: datetime) -> dict[str, ReserveRequest]:
        """The requests on the agent's cheaper allowed models, when pacing may downgrade to them."""
        pinning, pacing = self.defenses.pinning, self.defenses.pacing
        if pinning is None or pacing is None or pacing.action is not PaceAction.DOWNGRADE:
            return {}
        agent = call.attribution.agent
        candidates = {m: self._request(call, m, key, now) for m in allowed_models(pinning, agent)
                      if m != routed.model}
        ceilings = {routed.model: routed.ceiling_mc, **{m: r.ceiling_mc for m, r in candidates.items()}}
        cheaper = cheaper_models(pinning, agent=agent, model=routed.model, ceilings_mc=ceilings)
        return {m: candidates[m] for m in cheaper}

    def settle(self, reservation: Reservation, usage: Usage, *, served_model: str | None = None) -> SettleResult:
        """Charge the actual cost (priced at admission time) and return the rest of the hold.

        The breakers and automatic kill switches count the cost in the same transaction.
        Idempotent: a second settle answers ``already_settled`` and charges nothing.

        Args:
            served_model: the model the provider says it served (a response's ``model``), when
                known. If it resolves to another priced model than the admitted one, the call is
                charged at the served model's price (the provider bills what it ran) and a
                ``served_model`` event records both. A served model the price book does not know
                is charged conservatively: the higher of the cost at the admitted price and the
                reserved ceiling (the provider may have run something pricier). With model pins, a
                served model the agent's pin does not allow refuses the agent's next calls
                (:mod:`comptroller.domain.defenses.served_drift`).
        """
        price = self.prices.price(reservation.model, reservation.created_at)
        cost = cost_mc(price, usage)
        served = self._served(reservation, served_model)
        if served is not None:
            cost = cost_mc(self.prices.price(served, reservation.created_at), usage) if served else max(
                cost, reservation.ceiling_mc)
        guard = self._settle_guard if served is None else self._settle_guard.serving(served or str(served_model))
        result = self.store.settle(reservation.id, usage, cost, self.clock.now(), self.limits.settle(guard, usage))
        if served is not None and result.code in (Code.SETTLED, Code.SETTLED_LATE):
            self.store.record_event(Event(self.clock.now(), "served_model", "served_model_mismatch", scope=None,
                                          detail={"reservation": reservation.id, "admitted": reservation.model,
                                                  "served": served_model, "priced_as": served or None,
                                                  "cost_mc": cost}))
        self._publish(result.events)
        self._settled(result.record)
        return result

    def _served(self, reservation: Reservation, served_model: str | None) -> str | None:
        """The priced id of a served model other than the admitted one ("" if unpriced), else None."""
        if not served_model or served_model == reservation.model:
            return None
        try:
            served = self.prices.resolve(served_model)
        except LookupError:  # UnknownModelError
            return ""
        return None if served == reservation.model else served

    def renew(self, reservation: Reservation, ttl_s: float | None = None) -> bool:
        """Extend a call's lease to now + ``ttl_s`` (default: its original length) while the call runs.

        Call it well within the lease (every third of it, say) for streams and slow calls.
        False when the lease was already resolved or had expired (a sent call is then charged
        its ceiling as ``unknown_outcome``; its settle still corrects that to the real cost).

        Raises:
            LedgerUnavailableError: if the ledger cannot answer (try again at the next tick).
        """
        length_s = ttl_s or (reservation.expires_at - reservation.created_at).total_seconds()
        return self.store.renew(reservation.id, self.clock.now(), length_s)

    def outcome(self, reservation: Reservation, usage: Usage | None, *,
                served_model: str | None = None) -> SettleOutcome:
        """A call's outcome, priced as :meth:`settle` would charge it and stamped now, for delivery later.

        For an outbox: when the ledger cannot take a settle or release, the edge keeps this and
        hands it to :meth:`deliver` until the ledger has it. ``usage`` None is a release.
        """
        now = self.clock.now()
        if usage is None:
            return SettleOutcome(reservation.id, now)
        cost = cost_mc(self.prices.price(reservation.model, reservation.created_at), usage)
        served = self._served(reservation, served_model)
        if served is not None:
            cost = cost_mc(self.prices.price(served, reservation.created_at), usage) if served else max(
                cost, reservation.ceiling_mc)
        return SettleOutcome(reservation.id, now, usage, cost)

    def deliver(self, outcome: SettleOutcome, observe: Callable[[UsageRecord], None] | None = None) -> Code:
        """Hand a kept outcome to the ledger now; idempotent by reservation id.

        The ledger resolves it at delivery time (every lease due by then is resolved first,
        on every backend alike): a settle of a settled call answers ``already_settled`` and
        charges nothing; an outcome arriving after its lease was charged as ``unknown_outcome``
        corrects that charge (``settled_late``). ``outcome.at`` (when the call ended) stays in
        the outbox's record.

        Args:
            outcome: the kept outcome.
            observe: called with the usage row the delivery wrote, if it wrote one (the gateway's
                metrics count the charge then, as they do for a settle on the call path).

        Returns:
            The ledger's code (``reservation_not_found`` when the ledger never saw the id).

        Raises:
            LedgerUnavailableError: if the ledger still cannot answer (keep the outcome, retry later).
        """
        reservation = self.store.reservation(outcome.reservation_id)
        if reservation is None:
            return Code.RESERVATION_NOT_FOUND
        result: SettleResult | ReleaseResult
        if outcome.usage is None:
            result = self.store.release(reservation.id, self.clock.now(), self.limits.settle(self._settle_guard, None))
        else:
            result = self.store.settle(reservation.id, outcome.usage, outcome.cost_mc, self.clock.now(),
                                       self.limits.settle(self._settle_guard, outcome.usage))
            self._settled(result.record)
            if observe is not None and result.record is not None:
                observe(result.record)
        self._publish(result.events)
        return result.code

    def release(self, reservation: Reservation) -> ReleaseResult:
        """Return the whole hold: the call failed or was abandoned (a breaker probe lease returns too)."""
        result = self.store.release(reservation.id, self.clock.now(), self.limits.settle(self._settle_guard, None))
        self._publish(result.events)
        return result

    def open_run(self, run_id: str, duration_s_max: float, *, attribution: Attribution,
                 kind: RunKind = RunKind.SCHEDULED, spend_cap_mc: int | None = None) -> ScheduledRun:
        """Open a scheduled run (heartbeat, cron job) now; calls naming it are refused after its deadline.

        Idempotent: opening a run id that exists (for the attribution's tenant) returns the stored run
        unchanged. ``spend_cap_mc`` caps the ceilings its admitted calls may hold in all (None: no cap).

        Raises:
            DefenseConfigError: on an empty run id or a duration outside (0, 7 days] s.
        """
        scope = dict(attribution.scopes())[Level.AGENT]
        run = ScheduledRun(run_id=run_id, kind=kind, level=Level.AGENT, scope=scope, opened_at=self.clock.now(),
                           duration_s_max=duration_s_max, spend_cap_mc=spend_cap_mc)
        key = run_key(attribution, run_id)
        if self.store.put_state(StoredState(key, 1, run.to_record()), expected_version=0):
            return run
        stored = self.store.state(key)
        assert stored is not None  # it existed: put_state refused because of it
        return ScheduledRun.from_record(stored.record)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush and stop the event sinks within one deadline (the store stays open: it belongs to the caller)."""
        self.sinks.close(timeout_s)

    def _publish(self, events: Sequence[Event]) -> None:
        if events:
            self.sinks.publish(events)

    def _settled(self, record: UsageRecord | None) -> None:
        if record is not None:
            for hook in self.on_settled:
                hook(record)


def allowed_models(policy: PinningPolicy, agent: str) -> list[str]:
    """The models an agent's pin allows (by name or by tier), sorted; empty if unpinned."""
    pin = policy.pin_for(agent)
    if pin is None:
        return []
    return sorted({*pin.models, *(m for m, tier in policy.model_tiers.items() if tier in pin.tiers)})


def _recounted(call: CallRequest, models: Sequence[str]) -> CallRequest:
    """``call`` with its input bound lowered to the largest recount over ``models`` (none: unchanged)."""
    assert call.input_recount is not None
    counts = [call.input_recount(model) for model in models]
    if not counts or any(c is None for c in counts):
        return replace(call, input_recount=None)
    tighter = max(c for c in counts if c is not None)
    return replace(call, input_tokens_max=min(call.input_tokens_max, tighter), input_recount=None)


def _route_taken(route: Route | Verdict, model: str) -> Route | None:
    if isinstance(route, Verdict):
        return None
    if route.model == model:
        return route
    return Route(model, route.requested_model, RouteReason.PACING_DOWNGRADE,
                 f"pacing moved the call from {route.model!r} to the cheaper allowed {model!r}")
