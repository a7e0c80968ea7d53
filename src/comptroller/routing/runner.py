"""Run a cascade through the engine: each tier attempt is its own admit -> call -> settle/release.

The one function every edge uses (SDK ``cascade(...)``, the gateway's ``cascade/<name>``
models, replay): :func:`run_cascade` (or :func:`run_cascade_async` for an async
provider call). The caller supplies ``call``, which performs one tier's provider call
for a :class:`TierCall` (the model and the output bound to send) and returns a
:class:`TierReply` (text, finish reason, usage); the runner does the money:

1. :func:`~comptroller.domain.routing.cascade.plan` lists the attempts (pinned-out
   models dropped; pinning always wins);
2. per attempt: ``Engine.admit`` with idempotency key ``<request_id>:<tier>:<attempt>``
   (a refusal stops the cascade and is returned as the refusal verdict); ``call``;
   ``Engine.settle`` with the reply's usage (``Engine.release`` if ``call`` raised);
   the tier's gates decide accept or pass over;
3. one ``route`` event records the request id, the tier that answered, the reason,
   every pass-over and the cost, for :mod:`comptroller.reports.routing`.

Every attempt carries the request's attribution, so budgets see every tier's spend.

The runner needs only :class:`CascadeEngine` of an engine (admit, settle, release, the
prices, the clock, the event log and the model pins): :class:`comptroller.engine.Engine` is
one, and the gateway's ``MeteredEngine`` (fail-closed admission, in-flight tracking,
metrics) is another, by composition.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from comptroller.domain.defenses.pinning import PinningPolicy, route_request
from comptroller.domain.defenses.verdict import Verdict
from comptroller.domain.ledger import Event, ReleaseResult, Reservation, SettleResult
from comptroller.domain.routing.cascade import Cascade, PassOver, PlannedAttempt, decide, plan
from comptroller.domain.routing.gates import Answer
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.usage import Usage
from comptroller.engine import Admission, CallRequest
from comptroller.ports import Clock, PriceSource

__all__ = [
    "AttemptRecord",
    "CascadeEngine",
    "CascadeRequest",
    "CascadeResult",
    "Outcome",
    "TierCall",
    "TierReply",
    "run_cascade",
    "run_cascade_async",
]

ROUTE_EVENT = "route"


class EventLog(Protocol):
    """Where the runner records its ``route`` event (a :class:`~comptroller.ports.LedgerStore` is one)."""

    def record_event(self, event: Event) -> None:
        """Append one event."""
        ...


class Pins(Protocol):
    """The defenses as the runner reads them: the agents' model pins, if any."""

    @property
    def pinning(self) -> PinningPolicy | None:
        """Allowed models per agent (None: unrestricted)."""
        ...


class CascadeEngine(Protocol):
    """What the runner needs of an engine: one admit -> settle / release per tier attempt, and its parts."""

    @property
    def prices(self) -> PriceSource:
        """Resolves tier models to priced ids."""
        ...

    @property
    def clock(self) -> Clock:
        """Stamps the ``route`` event."""
        ...

    @property
    def store(self) -> EventLog:
        """Records the ``route`` event."""
        ...

    @property
    def defenses(self) -> Pins:
        """The model pins (pinning always wins over the cascade's plan)."""
        ...

    def admit(self, call: CallRequest) -> Admission:
        """Admit one attempt (a refusal is an answer, not an exception)."""
        ...

    def settle(self, reservation: Reservation, usage: Usage) -> SettleResult:
        """Charge an attempt's usage."""
        ...

    def release(self, reservation: Reservation) -> ReleaseResult:
        """Return the hold of an attempt that failed upstream."""
        ...


@dataclass(frozen=True, slots=True)
class CascadeRequest:
    """One request to answer through a cascade.

    Attributes:
        attribution: who pays (every attempt is attributed here).
        input_tokens_max: an upper bound on the input tokens of each attempt.
        max_tokens: the requested output limit (the engine's caps may lower it).
        prompt: the last user message (gates may read it).
        response_schema: the request's ``response_format`` JSON schema, if any.
        request_id: the id all attempts share (default: a new UUID); reusing it makes
            a retried request idempotent attempt by attempt.
        run_id, attempt_id: the scheduled run and task attempt every tier attempt belongs to
            (deadline and re-attempt limit; see :class:`comptroller.engine.CallRequest`).
        fingerprint, text: the loop detectors' inputs for the request. Each tier attempt is
            checked with the fingerprint qualified by tier and attempt (a cascade's own
            escalations are not repeats; the same request sent again is), and the text is
            checked once, with the first attempt.
        output_tokens_extra: output tokens each attempt is billed beyond the bound sent upstream
            (a Predicted Output's rejected tokens: :func:`comptroller.domain.tokens.prediction_tokens_max`),
            reserved on top (:attr:`comptroller.engine.CallRequest.output_tokens_extra`).
    """

    attribution: Attribution
    input_tokens_max: int
    max_tokens: int | None = None
    prompt: str = ""
    response_schema: Mapping[str, Any] | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    run_id: str | None = None
    attempt_id: str | None = None
    fingerprint: str | None = None
    text: str | None = None
    output_tokens_extra: int = 0


@dataclass(frozen=True, slots=True)
class TierCall:
    """What ``call`` must send upstream: ``model`` with ``max_tokens = output_tokens_max``.

    ``output_tokens_max`` is the bound sent upstream: the reservation's output bound less the
    request's ``output_tokens_extra`` (reserved, but billed beyond ``max_tokens``).
    """

    request_id: str
    tier: str
    attempt: int
    model: str
    output_tokens_max: int


@dataclass(frozen=True, slots=True)
class TierReply:
    """What ``call`` got back: the text, the finish reason, the billed usage, and the raw response."""

    text: str
    usage: Usage
    finish_reason: str | None = "stop"
    raw: Any = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt as the ledger saw it: its reservation, the settle/release code and cost (millicents)."""

    tier: str
    attempt: int
    model: str
    reservation_id: str
    code: str
    cost_mc: int
    accepted: bool
    reason: str


class Outcome(StrEnum):
    """How a cascade ended."""

    ANSWERED = "answered"
    """A tier's answer passed its gates."""
    EXHAUSTED = "exhausted"
    """Every planned attempt failed its gates or upstream; ``reply`` is the last answer, if any."""
    REFUSED = "refused"
    """An admission refused (budget, pinning, defenses); ``verdict`` says why."""


@dataclass(frozen=True, slots=True)
class CascadeResult:
    """The answer of a cascade and how it was reached.

    Attributes:
        request_id: the id shared by the attempts.
        cascade: the cascade's name.
        tiers: the cascade's tier names, cheapest first.
        outcome: answered, exhausted or refused.
        tier, model: who answered (or gave the last answer), None if nobody did.
        reply: that answer.
        reason: why this tier answered (or why none did).
        route_reason: why the request went to this cascade and start tier.
        passed_over: why each earlier attempt or tier did not answer, in order.
        attempts: every attempt's ledger record.
        verdict: the refusal, when refused.
    """

    request_id: str
    cascade: str
    tiers: tuple[str, ...]
    outcome: Outcome
    tier: str | None
    model: str | None
    reply: TierReply | None
    reason: str
    route_reason: str
    passed_over: tuple[PassOver, ...]
    attempts: tuple[AttemptRecord, ...]
    verdict: Verdict | None = None

    @property
    def cost_mc(self) -> int:
        """Settled cost of every attempt, millicents."""
        return sum(a.cost_mc for a in self.attempts)

    def headers(self) -> dict[str, str]:
        """Response headers for the gateway (ASCII): cascade, tier, reason, request id."""
        def ascii_(text: str) -> str:
            flat = " ".join(text.split())  # no CR/LF in a header value
            return flat.encode("ascii", "replace").decode("ascii")[:512]
        passed = " | ".join(f"{p.tier}#{p.attempt}: {p.reason}" for p in self.passed_over)
        return {"x-comptroller-request-id": self.request_id, "x-comptroller-cascade": self.cascade,
                "x-comptroller-outcome": str(self.outcome), "x-comptroller-tier": self.tier or "",
                "x-comptroller-route-reason": ascii_(self.route_reason), "x-comptroller-reason": ascii_(self.reason),
                "x-comptroller-passed-over": ascii_(passed)}

    def to_event_detail(self) -> dict[str, Any]:
        """The ``route`` event's detail (JSON values)."""
        return {"request_id": self.request_id, "cascade": self.cascade, "tiers": list(self.tiers),
                "outcome": str(self.outcome),
                "tier": self.tier, "model": self.model, "reason": self.reason, "route_reason": self.route_reason,
                "cost_mc": self.cost_mc, "tiers_tried": list(dict.fromkeys(a.tier for a in self.attempts)),
                "passed_over": [[p.tier, p.model, p.attempt, p.reason] for p in self.passed_over],
                "attempts": [[a.tier, a.attempt, a.model, a.reservation_id, a.code, a.cost_mc] for a in self.attempts]}


class _Run:
    """The bookkeeping shared by the sync and async drivers (no provider call in here)."""

    def __init__(self, engine: CascadeEngine, cascade: Cascade, request: CascadeRequest, *, start_tier: int,
                 route_reason: str, pinning: PinningPolicy | None) -> None:
        self.engine, self.cascade, self.request = engine, cascade, request
        agent = request.attribution.agent
        self.pinning = pinning if pinning is not None else engine.defenses.pinning
        pins = self.pinning

        def allowed(model: str) -> bool:
            return pins is None or pins.allows(agent, engine.prices.resolve(model))
        self.plan = plan(cascade, start_tier=start_tier, allowed=allowed)
        self.route_reason = route_reason or f"cascade {cascade.name!r} from tier {cascade.tiers[start_tier].name!r}"
        self.passed_over: list[PassOver] = list(self.plan.skipped)
        self.attempts: list[AttemptRecord] = []
        self.last: tuple[PlannedAttempt, TierReply] | None = None

    def admit(self, step: PlannedAttempt) -> Admission:
        request = self.request
        first = not self.attempts
        return self.engine.admit(CallRequest(
            attribution=request.attribution, model=step.model, input_tokens_max=request.input_tokens_max,
            max_tokens=request.max_tokens, idempotency_key=f"{request.request_id}:{step.tier}:{step.attempt}",
            output_tokens_extra=request.output_tokens_extra,
            run_id=request.run_id, attempt_id=request.attempt_id,
            fingerprint=None if request.fingerprint is None else f"{request.fingerprint}|{step.tier}|{step.attempt}",
            text=request.text if first else None))

    def tier_call(self, step: PlannedAttempt, admission: Admission) -> TierCall:
        return TierCall(self.request.request_id, step.tier, step.attempt, admission.model,
                        admission.output_tokens_max - self.request.output_tokens_extra)

    def failed(self, step: PlannedAttempt, admission: Admission, exc: Exception) -> None:
        assert admission.reservation is not None
        released = self.engine.release(admission.reservation)
        reason = f"upstream error: {type(exc).__name__}: {exc}"
        self.attempts.append(AttemptRecord(step.tier, step.attempt, admission.model, admission.reservation.id,
                                           str(released.code), 0, False, reason))
        self.passed_over.append(PassOver(step.tier, admission.model, step.attempt, reason))

    def judge(self, step: PlannedAttempt, admission: Admission, reply: TierReply) -> CascadeResult | None:
        assert admission.reservation is not None
        settled = self.engine.settle(admission.reservation, reply.usage)
        cost = settled.record.cost_mc if settled.record is not None else 0
        tier = self.cascade.tiers[step.tier_index]
        answer = Answer(reply.text, reply.finish_reason, self.request.prompt, self.request.response_schema)
        decision = decide(tier.gates, answer)
        self.attempts.append(AttemptRecord(step.tier, step.attempt, admission.model, admission.reservation.id,
                                           str(settled.code), cost, decision.accept, decision.reason))
        self.last = (step, reply)
        if decision.accept:
            return self.finish(Outcome.ANSWERED, step.tier, admission.model, reply,
                               f"tier {step.tier!r} answered on attempt {step.attempt}: {decision.reason}")
        self.passed_over.append(PassOver(step.tier, admission.model, step.attempt, decision.reason))
        return None

    def refused(self, admission: Admission) -> CascadeResult:
        verdict = admission.verdict
        return self.finish(Outcome.REFUSED, None, None, None,
                           f"refused: {verdict.message if verdict is not None else admission.code}", verdict=verdict)

    def exhausted(self) -> CascadeResult:
        if not self.plan.attempts:
            return self.finish(Outcome.REFUSED, None, None, None, "pinning: no tier has a model the agent may use",
                               verdict=self._pinning_verdict())
        if self.last is None:
            return self.finish(Outcome.EXHAUSTED, None, None, None, "every attempt failed upstream")
        step, reply = self.last
        return self.finish(Outcome.EXHAUSTED, step.tier, step.model, reply,
                           f"every tier failed its gates; the last answer (tier {step.tier!r}) is returned unaccepted")

    def _pinning_verdict(self) -> Verdict | None:
        attribution = self.request.attribution
        scope = dict(attribution.scopes())[Level.AGENT]
        model = self.engine.prices.resolve(self.cascade.tiers[-1].models[0])
        found = route_request(self.pinning or PinningPolicy(), agent=attribution.agent, scope=scope, model=model)
        return found if isinstance(found, Verdict) else None

    def finish(self, outcome: Outcome, tier: str | None, model: str | None, reply: TierReply | None, reason: str,
               *, verdict: Verdict | None = None) -> CascadeResult:
        result = CascadeResult(self.request.request_id, self.cascade.name, tuple(t.name for t in self.cascade.tiers),
                               outcome, tier, model, reply, reason,
                               self.route_reason, tuple(self.passed_over), tuple(self.attempts), verdict)
        scope = dict(self.request.attribution.scopes())[Level.AGENT]
        self.engine.store.record_event(Event(ts=self.engine.clock.now(), kind=ROUTE_EVENT, code=str(outcome),
                                             level=str(Level.AGENT), scope=scope, detail=result.to_event_detail()))
        return result


def run_cascade(engine: CascadeEngine, cascade: Cascade, request: CascadeRequest,
                call: Callable[[TierCall], TierReply], *, start_tier: int = 0, route_reason: str = "",
                pinning: PinningPolicy | None = None) -> CascadeResult:
    """Answer ``request`` with the cheapest tier whose answer passes its gates.

    Args:
        engine: admits, settles and releases every attempt.
        cascade: the tiers, cheapest first.
        request: the request (attribution, bounds, prompt, schema, request id).
        call: performs one tier's provider call; an exception counts as a failed
            attempt (its reservation is released) and the cascade moves on.
        start_tier: the tier to start at (from the rule router).
        route_reason: why this cascade and tier (from the rule router), recorded.
        pinning: the agents' pins (default: the engine's own); models an agent may not
            use are never called.

    Returns:
        The result: outcome, the answering tier and reply, the reasons, each attempt's cost.

    Raises:
        UnknownModelError: for a tier model without a price (configuration loading catches this first).
    """
    run = _Run(engine, cascade, request, start_tier=start_tier, route_reason=route_reason, pinning=pinning)
    for step in run.plan.attempts:
        admission = run.admit(step)
        if not admission.admitted:
            return run.refused(admission)
        try:
            reply = call(run.tier_call(step, admission))
        except Exception as exc:  # the provider failed: release the hold and escalate, as the plan says
            run.failed(step, admission, exc)
            continue
        result = run.judge(step, admission, reply)
        if result is not None:
            return result
    return run.exhausted()


async def run_cascade_async(engine: CascadeEngine, cascade: Cascade, request: CascadeRequest,
                            call: Callable[[TierCall], Awaitable[TierReply]], *, start_tier: int = 0,
                            route_reason: str = "", pinning: PinningPolicy | None = None) -> CascadeResult:
    """:func:`run_cascade` for an async provider call (the gateway); same arguments and result."""
    run = _Run(engine, cascade, request, start_tier=start_tier, route_reason=route_reason, pinning=pinning)
    for step in run.plan.attempts:
        admission = run.admit(step)
        if not admission.admitted:
            return run.refused(admission)
        try:
            reply = await call(run.tier_call(step, admission))
        except Exception as exc:  # the provider failed: release the hold and escalate, as the plan says
            run.failed(step, admission, exc)
            continue
        result = run.judge(step, admission, reply)
        if result is not None:
            return result
    return run.exhausted()
