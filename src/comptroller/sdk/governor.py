"""The SDK's core: :class:`Comptroller`, attribution in a context variable, and scheduled runs.

Every metered call of a wrapped client (``comptroller.sdk.openai``,
``comptroller.sdk.anthropic``; which methods are metered, free or refused is
:mod:`comptroller.sdk.catalog`) goes through :meth:`Comptroller.admit` and then exactly one
of :meth:`Comptroller.settle` or :meth:`Comptroller.release`: the same engine, the same
defenses and budgets as the gateway and replay, without an HTTP hop.

Attribution is, from weakest to strongest: the :class:`Comptroller`'s defaults, the
wrapper's (``wrap(client, agent="writer")``), the innermost ``with
comptroller.attribution(...)`` block (a :mod:`contextvars` variable, so it follows
threads started with ``contextvars.copy_context`` and asyncio tasks), and the call's own
``attribution=`` argument.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from comptroller.batch_config import BatchSection
from comptroller.bootstrap import build_engine
from comptroller.config import load_policy
from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.ledger import Event, Reservation, SettleResult
from comptroller.domain.routing.errors import RoutingConfigError
from comptroller.domain.routing.rules import RouteFacts
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.domain.usage import Usage
from comptroller.domain.usage_checks import check_served_model, check_usage
from comptroller.engine import Admission, CallRequest, Engine
from comptroller.engine.recount import InputRecount
from comptroller.routing import CascadeRequest, CascadeResult, RoutingConfig, TierCall, TierReply
from comptroller.sdk.actions import Act, guarded_action
from comptroller.sdk.anthropic import wrap_anthropic
from comptroller.sdk.batch_ledger import BatchLedger
from comptroller.sdk.batch_methods import anthropic_batch_methods, openai_batch_methods
from comptroller.sdk.context import CallContext
from comptroller.sdk.errors import refused
from comptroller.sdk.leases import LeaseKeeper
from comptroller.sdk.metered import bound
from comptroller.sdk.openai import wrap_openai

__all__ = ["CallContext", "Comptroller"]


_CONTEXT: contextvars.ContextVar[CallContext] = contextvars.ContextVar(
    "comptroller_context", default=CallContext())  # noqa: B039 (CallContext is frozen)


def last_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The text of the last message (what the agent adds this turn), or None."""
    if not messages:
        return None
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        return "\n".join(texts) or None
    return None


class Comptroller:
    """The in-process control plane: wrap provider clients so every call is admitted and settled.

    Args:
        engine: the engine (build one with :meth:`from_policy` or :func:`comptroller.bootstrap.build_engine`).
        namespace, tenant, agent: default attribution of every call.
        routing: the policy's cascades (:meth:`cascade`).
        batch: the ``[batch]`` section: batch prices where genai-prices has none, the batch line lease
            (default: :class:`~comptroller.batch_config.BatchSection`'s, a full-price over-bound).

    Example::

        comptroller = Comptroller.from_policy("policy.toml", db="sqlite:///ledger.db", tenant="acme")
        client = comptroller.wrap(openai.OpenAI(), agent="writer")
        with comptroller.attribution(conversation="c-17"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[...])   # may raise BudgetExceededError
    """

    def __init__(self, engine: Engine, *, namespace: str = "default", tenant: str | None = None,
                 agent: str | None = None, routing: RoutingConfig | None = None,
                 batch: BatchSection | None = None) -> None:
        self.engine = engine
        self.defaults = CallContext(namespace=namespace, tenant=tenant, agent=agent)
        self.routing = routing
        self.leases = LeaseKeeper(engine.renew)
        self.batches = BatchLedger(engine, batch or BatchSection(), self.leases)

    @classmethod
    def from_policy(cls, policy: str | Path | None = None, *, db: str = "sqlite:///comptroller.db",
                    tenant: str | None = None, agent: str | None = None) -> Comptroller:
        """A Comptroller on the ledger at ``db`` with the policy file's budgets, caps, prices and defenses.

        Raises:
            ConfigError: for an invalid policy file.
            StoreURLError: for an unknown ledger URL.
        """
        loaded = load_policy(policy)
        engine = build_engine(db_url=db, policy=loaded)
        return cls(engine, namespace=loaded.namespace, tenant=tenant, agent=agent,
                   routing=loaded.routing_config(engine.prices), batch=loaded.batch)

    @contextmanager
    def attribution(self, **ids: str | None) -> Iterator[CallContext]:
        """Attribute the calls made inside the block (``agent=``, ``conversation=``, ``task=``, ...).

        Raises:
            TypeError: for an unknown id name.
        """
        token = _CONTEXT.set(CallContext(**ids).over(_CONTEXT.get()))
        try:
            yield _CONTEXT.get()
        finally:
            _CONTEXT.reset(token)

    def action(self, *, platform: str, kind: str, text: str, **options: Any) -> AbstractContextManager[Act]:
        """A guarded side effect: ``with comptroller.action(platform=, kind=, text=) as act:`` (refusal raises,
        the outcome is recorded on exit); :func:`comptroller.sdk.actions.guarded_action` has the options."""
        return guarded_action(self, platform=platform, kind=kind, text=text, **options)

    @contextmanager
    def scheduled_run(self, run_id: str, max_duration_s: float, **ids: str | None) -> Iterator[CallContext]:
        """A scheduled run (heartbeat, cron job) with a hard deadline (DESIGN.md rule 6, layer 1).

        Opens the run in the ledger now (idempotent per ``run_id``); every call inside the block
        carries ``run_id``, and once ``max_duration_s`` has passed since the run was opened the
        engine refuses them with :class:`~comptroller.sdk.errors.DeadlineExceededError`.

        Raises:
            DefenseConfigError: on an empty run id or a duration outside (0, 7 days].
        """
        with self.attribution(run_id=run_id, **ids) as context:
            self.engine.open_run(run_id, max_duration_s, attribution=context.over(self.defaults).attribution())
            yield context

    def context(self, wrapper: CallContext | None = None, call: CallContext | None = None) -> CallContext:
        """The effective context: defaults < wrapper < ``with`` blocks < the call's own."""
        effective = (wrapper or CallContext()).over(self.defaults)
        effective = _CONTEXT.get().over(effective)
        return effective if call is None else call.over(effective)

    def admit(self, *, context: CallContext, model: str, messages: Sequence[Mapping[str, Any]] | None,
              input_tokens_max: int, max_tokens: int | None, choices: int = 1,
              input_recount: InputRecount | None = None) -> Admission:
        """Admit a call or raise its refusal.

        The call is reserved as sent (it goes upstream right away: a lease that expired
        unresolved would be charged its ceiling, DESIGN.md rule 12), and its lease is renewed
        by :attr:`leases` until :meth:`settle` or :meth:`release`.

        Args:
            context: the call's attribution and run ids.
            model: the requested model.
            messages: the conversation, for the loop detectors (None: not a conversation turn,
                e.g. embeddings; the detectors are skipped).
            input_tokens_max: an upper bound on the input tokens.
            max_tokens: the requested output limit per choice, if any.
            choices: outputs generated (OpenAI ``n``); the output bound is reserved this many times.
            input_recount: a tighter input bound per priced model, asked near a budget's edge
                (:func:`comptroller.exact_input.input_recount`; None: ``input_tokens_max`` only).

        Raises:
            RefusedError: (a subclass per code) when any defense or budget refuses.
            UnknownModelError: for a model without a price.
            NoOutputCapError: when nothing bounds the output.
        """
        call = CallRequest(attribution=context.attribution(), model=model, input_tokens_max=input_tokens_max,
                           max_tokens=max_tokens, run_id=context.run_id, attempt_id=context.attempt_id,
                           fingerprint=None if messages is None else fingerprint(model, messages),
                           text=None if messages is None else last_text(messages), choices=choices, sends=True,
                           input_recount=input_recount)
        admission = self.engine.admit(call)
        if admission.reservation is None:
            assert admission.verdict is not None
            raise refused(admission.verdict)
        self.leases.hold(admission.reservation)
        return admission

    def settle(self, reservation: Reservation, usage: Usage | None, *, served_model: str | None = None) -> SettleResult:
        """Charge what the call used, after checking it (issue 11 item 4, as the gateway does).

        Usage above the bounds the call was admitted with is charged in full (the provider bills
        it) and recorded as a ``usage_anomaly`` event. A ``served_model`` other than the admitted
        one (a dated snapshot of it is the same model) is charged at its own price by the engine,
        which records a ``served_model`` event.

        Args:
            reservation: the call's hold.
            usage: what the provider reported; None (nothing reported) charges the whole bound.
            served_model: the response's ``model``, when it has one.
        """
        self.leases.drop(reservation)
        if usage is None:
            usage = bound(reservation)
        for anomaly in check_usage(usage, input_tokens_max=reservation.input_tokens_max,
                                   output_tokens_max=reservation.output_tokens_max):
            self.engine.store.record_event(Event(
                self.engine.clock.now(), "usage_anomaly", anomaly.code, detail={
                    "reservation": reservation.id, "api": "sdk", "model": reservation.model,
                    "bucket": anomaly.bucket, "reported_tokens": anomaly.reported_tokens,
                    "bound_tokens": anomaly.bound_tokens, "message": anomaly.describe()}))
        other = None if check_served_model(reservation.model, served_model) is None else served_model
        return self.engine.settle(reservation, usage, served_model=other)

    def release(self, reservation: Reservation) -> None:
        """Return the hold of a call that failed before the provider billed it."""
        self.leases.drop(reservation)
        self.engine.release(reservation)

    def batch_report(self, batch_id: str) -> dict[str, Any] | None:
        """The reconciliation of a batch created through a wrapped client (:mod:`comptroller.sdk.batch_methods`).

        Returns:
            ``{}`` while it runs; once reconciled: ``lines``, ``settled``, ``released``, ``cost_mc``,
            ``missing`` / ``duplicate`` / ``unexpected`` counts and their ``*_custom_ids``; None for a
            batch the SDK did not create.
        """
        return self.batches.report(batch_id)

    def reconcile_batches(self, client: Any) -> list[str]:
        """Look at every open batch of the client's API that the ledger holds (from any process, a restarted
        one too): reconcile those that ended, renew the line leases of those still running.

        Args:
            client: an unwrapped ``openai.OpenAI`` or ``anthropic.Anthropic`` client (sync; with an async
                client, ``await`` the wrapped ``retrieve`` of each batch instead).

        Returns:
            The ids of the batches reconciled by this pass.

        Raises:
            TypeError: for an async or unknown client.
        """
        api = type(client).__module__.split(".", 1)[0]
        if api not in ("openai", "anthropic") or type(client).__name__.startswith("Async"):
            raise TypeError("reconcile_batches takes a sync openai.OpenAI or anthropic.Anthropic client; with an "
                            "async client, await the wrapped retrieve(batch_id) of each batch")
        wrapped = self.wrap(client)
        retrieve = wrapped.batches.retrieve if api == "openai" else wrapped.messages.batches.retrieve
        seen = self.batches.open_ids(api)
        for batch_id in seen:
            retrieve(batch_id)
        return [batch_id for batch_id in seen if not self.batches.is_open(batch_id)]

    def cascade(self, messages: Sequence[Mapping[str, Any]], call: Callable[[TierCall], TierReply], *,
                cascade: str | None = None, max_tokens: int | None = None,
                response_schema: Mapping[str, Any] | None = None, deep_mode: bool = False,
                role: str | None = None, request_id: str | None = None,
                attribution: CallContext | None = None) -> CascadeResult:
        """Answer through a cheap-first cascade of the policy's ``[cascades]`` (issue 5, rule 7 of DESIGN.md).

        Each tier attempt is admitted, sent with ``call`` (your provider call: send
        ``tc.model`` with ``max_tokens = tc.output_tokens_max``; return a
        :class:`~comptroller.routing.TierReply` with the text and the billed usage), judged
        by the tier's gates, and settled; an exception from ``call`` releases the attempt.

        Args:
            messages: the chat messages (their last user text feeds gates and routing rules).
            call: one tier attempt's provider call.
            cascade: the cascade's name (None: the ``[routing]`` rules and default choose).
            max_tokens, response_schema: the request's output limit and JSON schema, if any.
            deep_mode, role: facts for the routing rules.
            request_id: the id shared by the attempts (a retry with it is idempotent).
            attribution: ids overriding the context for this request.

        Returns:
            The :class:`~comptroller.routing.CascadeResult`: which tier answered, why earlier
            tiers were passed over, every attempt's cost.

        Raises:
            RefusedError: (a subclass per code) when an admission refused the request.
            RoutingConfigError: when the policy has no cascades, or none is chosen.
        """
        if self.routing is None:
            raise RoutingConfigError("this Comptroller has no [cascades]: build it with from_policy(...) on a "
                                     "policy that defines them, or pass routing=")
        context = self.context(None, attribution)
        text = last_text(messages) or ""
        input_max = request_input_tokens_max({"messages": list(messages)}, api="chat")
        request = CascadeRequest(attribution=context.attribution(), input_tokens_max=input_max, max_tokens=max_tokens,
                                 prompt=text, response_schema=response_schema, run_id=context.run_id,
                                 attempt_id=context.attempt_id, fingerprint=fingerprint("cascade", messages),
                                 text=text)
        if request_id:
            request = dataclasses.replace(request, request_id=request_id)
        facts = RouteFacts(agent=request.attribution.agent, input_tokens=input_max, deep_mode=deep_mode, text=text,
                           role=role)
        result = self.routing.run(self.engine, request, call, facts=facts, cascade=cascade)
        if result.verdict is not None and result.reply is None:
            raise refused(result.verdict)
        return result

    def wrap(self, client: Any, *, allow_unmetered: Collection[str] = (), **ids: str | None) -> Any:
        """Wrap an ``openai`` or ``anthropic`` client (sync or async); ``ids`` attribute its calls.

        Every method that can cost money is metered; free ones pass through; any other one
        raises :class:`~comptroller.sdk.errors.UnmeteredCallError` when called, unless named
        in ``allow_unmetered`` (see :mod:`comptroller.sdk.catalog`).

        Args:
            client: ``openai.OpenAI``, ``openai.AsyncOpenAI``, ``anthropic.Anthropic`` or
                ``anthropic.AsyncAnthropic``.
            allow_unmetered: dotted method names to let through unmetered, e.g. ``{"images.generate"}``
                (their cost counts against no budget).
            ids: attribution of every call (``agent=``, ``conversation=``, ``task=``...).

        Raises:
            TypeError: for any other client, or an unknown id name.
        """
        module = type(client).__module__.split(".", 1)[0]
        context = CallContext(**ids)
        allowed = frozenset(allow_unmetered)
        is_async = type(client).__name__.startswith("Async")
        if module == "openai":
            return wrap_openai(client, self, context, allowed,
                               openai_batch_methods(client, self, self.batches, context, is_async))
        if module == "anthropic":
            return wrap_anthropic(client, self, context, allowed,
                                  anthropic_batch_methods(client, self, self.batches, context, is_async))
        raise TypeError(f"cannot wrap a {type(client).__module__}.{type(client).__name__}: pass an openai.OpenAI, "
                        "openai.AsyncOpenAI, anthropic.Anthropic or anthropic.AsyncAnthropic client")
