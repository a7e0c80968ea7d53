"""``cascade/<name>`` models on ``POST /v1/chat/completions``: cheap-first cascades through the gateway.

A request whose model is ``cascade/<name>`` is answered by the policy's ``[cascades.NAME]``
(:mod:`comptroller.routing`), the ``[routing]`` rules for that cascade choosing the start
tier; ``cascade/auto`` (unless a cascade is named ``auto``) lets every rule choose, else the
``[routing]`` default. The runner (:func:`comptroller.routing.runner.run_cascade_async`)
admits each tier attempt (its own reservation, idempotency key
``<request id>:<tier>:<attempt>``), this module sends the client's body upstream with the
tier's model and the reserved output bound, and the runner settles the attempt and applies
the tier's gates (JSON schema from ``response_format``, confidence, finish reason...).
Pinning always wins: a tier model outside the agent's pin is never called. A Predicted Output
(``prediction``) is reserved on every attempt beyond the bound sent upstream, as the chat
adapter does (its rejected tokens are billed as output).

==============================================  ================================================
a tier attempt's exit                           ledger
==============================================  ================================================
answered with usage                             settle the usage; the gates decide
answered without usage                          settle the bounds (input bound, output bound)
connect error, timeout, HTTP error status       release; the runner moves to the next attempt
answered 200, body cut short or unreadable      settle the bounds (the provider billed it); next
request cancelled (shutdown) mid-attempt        settle the bounds (it may have been billed)
==============================================  ================================================

The answer:

* answered: the answering tier's body as the provider sent it, with the headers of
  :meth:`~comptroller.routing.runner.CascadeResult.headers` (``x-comptroller-tier``,
  ``-reason``, ``-route-reason``, ``-passed-over``, ``-outcome``, ``-request-id``,
  ``-cascade``), ``X-Comptroller-Model`` and ``X-Comptroller-Cost-Mc`` (every attempt's cost);
* every tier failed its gates: the last answer, unaccepted, with outcome ``exhausted``;
* no tier answered at all: 502 naming why each attempt failed;
* an admission refused (budget, pinning, defenses): the refusal's 429 (503 for the kill
  switch), with the cascade headers (earlier attempts may have been charged);
* ``stream: true``: 400 on ``stream`` (the gates need the whole answer).

With ``[gateway] ledger_threads`` (networked ledgers) the runner, and so every ledger call of
the cascade, runs in a worker thread, and each tier's upstream call is handed back to the
event loop; a request cut short (shutdown) cancels the attempt in flight and every later one,
so the runner's thread releases what it holds and ends on its own.

Request headers for the routing rules: ``X-Comptroller-Deep-Mode`` (``true``/``false``) and
``X-Comptroller-Role`` (the agent's role), beside the usual attribution headers.
``X-Comptroller-Message`` (the group message the call answers) reaches every tier attempt's
admission, as on the plain chat path, so a strict group's dispatch rule judges cascades too.
A key restricted to a model list must list ``cascade/<name>`` itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from functools import partial

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from comptroller.domain.routing import RouteFacts
from comptroller.domain.usage import Usage
from comptroller.engine import Admission, CallRequest
from comptroller.gateway.apis.base import ApiRequest
from comptroller.gateway.apis.chat import ChatApi, last_user_text, response_schema
from comptroller.gateway.apis.pipeline import check_model_allowed
from comptroller.gateway.attribution import attribute
from comptroller.gateway.errors import GatewayError, error_response, verdict_response
from comptroller.gateway.identity import Caller
from comptroller.gateway.metered_engine import MeteredEngine
from comptroller.gateway.runtime import Gateway
from comptroller.gateway.upstream import Upstream
from comptroller.routing import CascadeRequest, CascadeResult, Outcome, TierCall, TierReply

__all__ = ["CASCADE_PREFIX", "TierFailedError", "cascade_completion", "cascade_name"]

CASCADE_PREFIX = "cascade/"
AUTO = "auto"
_MESSAGE_MAX = 500
_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off", ""})


_CHAT = ChatApi()


class _AnsweringEngine(MeteredEngine):
    """:class:`MeteredEngine` whose every admission names the group message the request answers."""

    def __init__(self, gateway: Gateway, message_id: str | None) -> None:
        super().__init__(gateway)
        self.message_id = message_id

    def admit(self, call: CallRequest) -> Admission:
        """:meth:`MeteredEngine.admit` of the tier attempt, with ``X-Comptroller-Message``'s id."""
        return super().admit(call if self.message_id is None else replace(call, message_id=self.message_id))


class TierFailedError(Exception):
    """A tier attempt got no usable answer from its provider; the runner passes the attempt over."""


def cascade_name(model: str) -> str | None:
    """The cascade a ``model`` field names (``cascade/<name>`` -> ``name``), or None for a plain model."""
    return model[len(CASCADE_PREFIX):] if model.startswith(CASCADE_PREFIX) else None


def _flag(headers: Mapping[str, str], name: str) -> bool:
    value = headers.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise GatewayError(400, f"{name} must be true or false, got {value!r}", code="invalid_header", param=name)


def _failure(status: int, raw: bytes, provider: str) -> str:
    try:
        message = str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", "replace")
    return f"{provider} answered HTTP {status}: {message[:_MESSAGE_MAX] or 'no body'}"


class _Tiers:
    """Sends one tier attempt upstream for one request (the runner's ``call``)."""

    def __init__(self, gw: Gateway, chat: ApiRequest, metered: MeteredEngine) -> None:
        self.gw, self.chat, self.metered = gw, chat, metered
        self.cancelled = False
        self.scope: anyio.CancelScope | None = None

    def cancel(self) -> None:
        """Stop the attempt in flight and every later one (the request was cancelled, the runner runs on)."""
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    async def __call__(self, tc: TierCall) -> TierReply:
        reservation = self.metered.current
        if self.cancelled:  # nothing of this attempt was sent: the runner releases its hold (not its bounds)
            raise TierFailedError("the request was cancelled (client gone or shutdown); nothing more is sent")
        with anyio.CancelScope() as self.scope:
            try:
                return await self._ask(tc)
            except Exception:
                raise  # the runner releases the attempt (a no-op if it was charged at its bounds)
            except BaseException:  # cancelled (shutdown): the runner will not get to resolve the attempt,
                if reservation is not None:  # which may have been billed: charge its bounds (DESIGN.md rule 12)
                    await self._charge_bounds(tc)
                raise
        raise TierFailedError("the request was cancelled (client gone or shutdown); nothing more is sent")

    def _upstream(self, tc: TierCall) -> tuple[str, Upstream]:
        model = self.gw.tier_models.get(tc.model, tc.model)
        upstream = self.gw.upstreams.for_model(model)
        if upstream is None:  # tier_models checked every tier model at start-up
            raise TierFailedError(f"no provider serves model {model!r}")
        if upstream.config.kind != _CHAT.family:
            raise TierFailedError(f"model {model!r} is served by the {upstream.config.kind!r} provider "
                                  f"{upstream.name!r}; a cascade speaks chat completions (openai family) only")
        return model, upstream

    async def _charge_bounds(self, tc: TierCall) -> None:
        reservation = self.metered.current
        if reservation is not None:
            usage = Usage(input_tokens=self.chat.input_tokens_max,
                          output_tokens=tc.output_tokens_max + self.chat.output_tokens_extra)
            with anyio.CancelScope(shield=True):
                await self.gw.run(self.gw.settle, reservation, usage)

    async def _ask(self, tc: TierCall) -> TierReply:
        model, upstream = self._upstream(tc)
        body = _CHAT.forward_body(self.chat, tc.output_tokens_max, upstream.config)
        body["model"] = model
        sent = time.perf_counter()
        response = await upstream.open(_CHAT.path, body)
        try:
            raw = await response.read()
        except BaseException:
            response.abort()
            if response.ok:  # the provider ran the call: charge the bounds
                await self._charge_bounds(tc)
            raise
        response.release()
        self.gw.metrics.upstream_s.labels(upstream.name).observe(time.perf_counter() - sent)
        if not response.ok:
            raise TierFailedError(_failure(response.status, raw, upstream.name))
        try:
            answer = json.loads(raw)
            choice = answer["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            await self._charge_bounds(tc)
            raise TierFailedError(f"{upstream.name} answered 200 with a body that is not a chat completion; "
                                  "charged at the reserved bounds") from None
        usage = _CHAT.usage(answer) or Usage(input_tokens=self.chat.input_tokens_max,
                                             output_tokens=tc.output_tokens_max + self.chat.output_tokens_extra)
        return TierReply(str(text), usage, finish if isinstance(finish, str) else None, raw=raw)


def _facts(chat: ApiRequest, agent: str, headers: Mapping[str, str]) -> RouteFacts:
    role = (headers.get("x-comptroller-role") or "").strip() or None
    return RouteFacts(agent=agent, input_tokens=chat.input_tokens_max,
                      deep_mode=_flag(headers, "x-comptroller-deep-mode"), tools=bool(chat.body.get("tools")),
                      text=last_user_text(chat), role=role)


def _chosen(gw: Gateway, name: str) -> str | None:
    """The cascade to request from the router (None: let the rules and the default choose)."""
    if name in gw.routing.cascades:
        return name
    if name == AUTO:
        if gw.routing.router.default is None and not gw.routing.router.rules:
            raise GatewayError(400, "cascade/auto needs [routing] rules or a default cascade; none is configured",
                               code="model_not_found", param="model")
        return None
    raise GatewayError(400, f"no cascade {name!r}; configured cascades: {sorted(gw.routing.cascades)} "
                       f"(define [cascades.{name}] in the policy)", code="model_not_found", param="model")


def _respond(result: CascadeResult) -> Response:
    headers = {**result.headers(), "X-Comptroller-Cost-Mc": str(result.cost_mc)}
    if result.model is not None:
        headers["X-Comptroller-Model"] = result.model
    if result.outcome is Outcome.REFUSED:
        response = (verdict_response(result.verdict) if result.verdict is not None else
                    error_response(429, result.reason, type_="insufficient_quota", code="refused"))
        response.headers.update(headers)
        return response
    if result.reply is None:
        passed = "; ".join(f"{p.tier}#{p.attempt} ({p.model}): {p.reason}" for p in result.passed_over)
        return error_response(502, f"cascade {result.cascade!r}: {result.reason}: {passed}", type_="upstream_error",
                              code="upstream_error", headers=headers)
    raw = result.reply.raw
    return Response(raw if isinstance(raw, bytes) else json.dumps(raw), media_type="application/json",
                    headers=headers)


async def cascade_completion(gw: Gateway, request: Request, caller: Caller, chat: ApiRequest) -> Response:
    """Answer a ``cascade/<name>`` request (see the module docstring).

    Raises:
        GatewayError: 400 for an unknown cascade, ``stream: true`` or a bad routing header;
            403 for a key without the cascade in its model list or a widening header;
            503 when the ledger fails.
    """
    name = cascade_name(chat.model)
    assert name is not None
    check_model_allowed(caller, chat.model)
    if chat.stream:
        raise GatewayError(400, "stream must be false for a cascade model: each tier's gates judge the whole "
                           "answer before it is returned; call without stream", code="invalid_request",
                           param="stream")
    if chat.choices != 1:
        raise GatewayError(400, f"n must be 1 for a cascade model (each tier's gates judge one answer), got "
                           f"{chat.choices}", code="invalid_request", param="n")
    requested = _chosen(gw, name)
    attribution = attribute(caller, request.headers, namespace=gw.namespace, groups=gw.groups)
    metered = _AnsweringEngine(gw, request.headers.get("x-comptroller-message"))
    call = _Tiers(gw, chat, metered)
    cascade_request = CascadeRequest(attribution=attribution, input_tokens_max=chat.input_tokens_max,
                                     max_tokens=chat.max_tokens, prompt=last_user_text(chat),
                                     response_schema=response_schema(chat),
                                     run_id=request.headers.get("x-comptroller-run"),
                                     attempt_id=request.headers.get("x-comptroller-attempt"),
                                     fingerprint=chat.fingerprint, text=chat.text,
                                     output_tokens_extra=chat.output_tokens_extra)
    facts = _facts(chat, attribution.agent, request.headers)
    if not gw.config.ledger_threads:
        result = await gw.routing.run_async(metered, cascade_request, call, facts=facts, cascade=requested)
        return _respond(result)

    def on_the_loop(tc: TierCall) -> TierReply:  # the runner's thread hands each tier call back to the loop
        return anyio.from_thread.run(call, tc)

    try:
        result = await anyio.to_thread.run_sync(partial(gw.routing.run, metered, cascade_request, on_the_loop,
                                                        facts=facts, cascade=requested), abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        call.cancel()  # the runner's thread then releases what it holds and ends on its own
        raise
    return _respond(result)
