"""Relaying an SSE stream to the client while the adapter's tally reads it, then settling.

Events are forwarded as they come (an adapter may drop one: a chat usage chunk the client
did not ask for). At the event that ends the stream (``data: [DONE]``, ``response.completed``,
``message_stop``: :meth:`StreamTally.final`) the call is settled first and a comment
``: x-comptroller-cost-mc=N`` (and ``: x-comptroller-usage-anomaly=...`` when the usage
checks fail, ``: x-comptroller-served-model=...`` when another model served it, priced as
served) goes before that event, so a client reading to the end sees the cost. A stream
cut short (client gone, upstream failure) settles what was generated (the pipeline's exit table).
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from comptroller.domain.ledger import Reservation
from comptroller.domain.usage import Usage
from comptroller.engine import Admission
from comptroller.gateway.apis.base import Api, StreamTally, json_or_none
from comptroller.gateway.apis.settlement import Outcome, bound_usage, call_headers, settle_answer
from comptroller.gateway.errors import ErrorShape
from comptroller.gateway.runtime import Gateway, Settled
from comptroller.gateway.upstream import Upstream, UpstreamError, UpstreamResponse

__all__ = ["Relay"]


def _usage_so_far(tally: StreamTally, reservation: Reservation, finished: bool) -> Usage:
    """The reported usage (at least the output seen, if cut short), else the input bound and the output seen."""
    seen = tally.output_tokens_seen()
    usage = tally.usage
    if usage is None:
        return bound_usage(reservation, seen)
    if finished or usage.output_tokens >= seen:
        return usage
    return Usage(input_tokens=usage.input_tokens, output_tokens=min(seen, reservation.output_tokens_max),
                 cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
                 cache_write_1h_tokens=usage.cache_write_1h_tokens)


def _error_event(api: Api, message: str) -> bytes:
    """A mid-stream failure as the API's own error event."""
    if api.shape is ErrorShape.ANTHROPIC:
        data = {"type": "error", "error": {"type": "api_error", "message": message}}
        return f"event: error\ndata: {json.dumps(data)}\n\n".encode()
    error = {"error": {"message": message, "type": "upstream_error", "code": "upstream_error"}}
    return f"data: {json.dumps(error)}\n\n".encode()


class Relay(Response):
    """Streams the upstream SSE to the client, then settles (or, cut short, settles what was generated)."""

    def __init__(self, *, gw: Gateway, api: Api, upstream: Upstream, response: UpstreamResponse,
                 admission: Admission, tally: StreamTally, started: float, sent: float) -> None:
        # not Response.__init__: it would declare a Content-Length of the (empty) body
        self.status_code, self.media_type, self.background = 200, "text/event-stream", None
        self.init_headers(call_headers(admission))
        self.gw, self.api, self.upstream, self.upstream_response = gw, api, upstream, response
        self.admission, self.tally, self.started, self.sent = admission, tally, started, sent
        self.finished = False
        self.outcome: Outcome | None = None

    async def _settle(self) -> Outcome:
        if self.outcome is None:
            done = time.perf_counter()
            self.gw.metrics.child(self.gw.metrics.upstream_s, self.upstream.name).observe(done - self.sent)
            self.outcome = Outcome(Settled(None))  # claimed: a second caller never settles again
            reservation = self.admission.reservation
            assert reservation is not None
            usage = _usage_so_far(self.tally, reservation, self.finished)
            self.outcome = await settle_answer(self.gw, self.admission, usage, self.tally.served_model,
                                               self.api.name)
            self.gw.metrics.overhead_s.observe((self.sent - self.started) + (time.perf_counter() - done))
        return self.outcome

    async def _event(self, lines: list[str]) -> bytes | None:
        """The bytes to forward for one SSE event (None: drop it)."""
        name, payloads = None, []
        for line in lines:
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                payloads.append(line[5:].strip())
        data: dict[str, Any] | None = None
        payload = "\n".join(payloads)
        if payload and payload != "[DONE]":
            parsed = json_or_none(payload)
            if not isinstance(parsed, dict):
                return ("\n".join(lines) + "\n\n").encode("utf-8")
            data = parsed
            if not self.tally.observe(name, data):
                return None
        elif payload != "[DONE]":
            return ("\n".join(lines) + "\n\n").encode("utf-8")
        head = ""
        if self.tally.final(name, data):
            self.finished = True
            outcome = await self._settle()
            head = f": x-comptroller-cost-mc={outcome.settled.cost_mc}\n\n"
            if outcome.anomalies:
                head += f": x-comptroller-usage-anomaly={','.join(outcome.anomalies)}\n\n"
            if outcome.served_model is not None:
                head += f": x-comptroller-served-model={outcome.served_model}\n\n"
        return (head + "\n".join(lines) + "\n\n").encode("utf-8")

    async def _relay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        lines: list[str] = []
        try:
            async for line in self.upstream_response.lines():
                if line:
                    lines.append(line)
                    continue
                data = await self._event(lines) if lines else None
                lines = []
                if data is not None:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            self.upstream_response.release()
        except UpstreamError as exc:
            await send({"type": "http.response.body", "more_body": True,
                        "body": _error_event(self.api, f"{exc}, mid-stream; the generated part was charged")})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch_disconnect(cancel: anyio.CancelScope) -> None:
            message: Message = {}
            while message.get("type") != "http.disconnect":
                message = await receive()
            cancel.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch_disconnect, group.cancel_scope)
                await self._relay(send)
                group.cancel_scope.cancel()
        except* OSError:
            pass  # the client went away while we wrote: settle below
        finally:
            self.upstream_response.abort()  # a no-op once the stream was read to its end and released
            with anyio.CancelScope(shield=True):
                await self._settle()
