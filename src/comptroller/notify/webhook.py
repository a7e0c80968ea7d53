"""WebhookSink: signed JSON batches POSTed from a bounded queue by one background thread.

``publish`` serialises the events into one batch (several if there are more than
``batch_events_max``) and appends it to an in-memory queue; it never waits on the
network. One daemon thread takes batches oldest first and POSTs each, signed per
Standard Webhooks (:mod:`comptroller.notify.signing`), with the same ``webhook-id``
on every attempt so a receiver can drop duplicates.

Retries (tenacity) happen on connection errors, timeouts, HTTP 429 and 5xx only,
waiting exponential backoff with full jitter (a Retry-After in seconds is honoured up
to ``backoff_max_s``), for at most ``max_attempts`` attempts; any other answer
(2xx: delivered; 3xx or 4xx: failed) ends the batch. When the queue is full the oldest
undelivered batch is dropped, counted, and a warning logged: the events stay in the
ledger's ``events`` table. :meth:`WebhookSink.stats` returns the counters.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, stop_when_event_set
from tenacity.wait import wait_random_exponential

from comptroller.clock import SystemClock
from comptroller.domain.ledger import Event
from comptroller.notify.config import WebhookOptions, check_webhook_url
from comptroller.notify.payload import batch_body
from comptroller.notify.signing import decode_secret, signature_headers
from comptroller.ports import Clock

__all__ = ["WebhookSink", "WebhookStats"]

_log = logging.getLogger(__name__)
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True, slots=True)
class WebhookStats:
    """A snapshot of a webhook sink's counters since it was made.

    Attributes:
        delivered: batches answered 2xx; ``delivered_events``: the events in them.
        retried: attempts made after a retryable failure (so attempts = batches tried + retried).
        dropped: batches discarded undelivered: the oldest when the queue was full, those
            published after ``close``, those still queued when ``close`` timed out;
            ``dropped_events``: the events in them.
        failed: batches given up on (a non-retryable answer, or attempts exhausted);
            ``failed_events``: the events in them.
        queued: batches waiting now (not counting one in flight).
    """

    delivered: int = 0
    delivered_events: int = 0
    retried: int = 0
    dropped: int = 0
    dropped_events: int = 0
    failed: int = 0
    failed_events: int = 0
    queued: int = 0


@dataclass(frozen=True, slots=True)
class _Batch:
    msg_id: str
    created_at: datetime
    items: tuple[Event, ...]

    @property
    def events(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """How one POST ended: an HTTP status, or a transport error."""

    status: int | None = None
    error: str | None = None
    transient: bool = False
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return self.transient
        return self.status == 429 or self.status >= 500

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else str(self.error)


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP-date: the backoff schedule applies
    return seconds if seconds >= 0 else None


class WebhookSink:
    """Delivers events to one webhook URL, signed, retried, bounded.

    Args:
        url: absolute http(s) URL receiving POSTs.
        secret: ``whsec_<base64>`` shared with the receiver (see ``signing.generate_secret``).
        options: timeouts, attempts, backoff, queue and batch bounds (defaults: WebhookOptions()).
        clock: the engine's time, stamped as the body's ``timestamp`` when events are
            published (a VirtualClock in replay is fine). The ``webhook-timestamp`` header
            is always the wall clock at each attempt: receivers check it against their
            own clock to refuse replayed requests.

    Raises:
        ValueError: a bad url or secret (the message says what to write).

    The sink starts its delivery thread at once; call :meth:`close` to flush and stop it.
    """

    def __init__(self, url: str, secret: str, *, options: WebhookOptions | None = None,
                 clock: Clock | None = None) -> None:
        self.url = check_webhook_url(url)
        self.options = options or WebhookOptions()
        self._key = decode_secret(secret)
        self._clock: Clock = clock or SystemClock()
        self._wall = SystemClock()
        parts = urlsplit(url)
        self._where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        self._queue: deque[_Batch] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._stats = WebhookStats()
        # webhook-id: a random per-sink prefix and a counter (unique across processes, no syscall per batch)
        self._id_prefix = f"msg_{uuid.uuid4().hex[:20]}"
        self._id_counter = itertools.count()  # next() on a count is atomic under the GIL; a generator's is not
        self._backoff = wait_random_exponential(multiplier=self.options.backoff_initial_s,
                                                max=self.options.backoff_max_s)
        self._thread = threading.Thread(target=self._run, name=f"comptroller-webhook {self._where}", daemon=True)
        self._thread.start()

    # -- caller side ---------------------------------------------------------------------------

    def publish(self, events: Sequence[Event]) -> None:
        """Queue ``events`` for delivery (split into batches of ``batch_events_max``). Never blocks, never raises.

        The events are serialised on the delivery thread; they are frozen, and their
        ``detail`` dicts must not be changed after publishing.
        """
        try:
            size = self.options.batch_events_max
            now = self._clock.now()
            for start in range(0, len(events), size):
                msg_id = f"{self._id_prefix}{next(self._id_counter):012x}"
                self._enqueue(_Batch(msg_id, now, tuple(events[start:start + size])))
        except Exception:
            _log.exception("webhook %s: could not queue events; they stay in the ledger", self._where)

    def _enqueue(self, batch: _Batch) -> None:
        with self._cond:
            if self._closing:
                self._count(dropped=1, dropped_events=batch.events)
                _log.warning("webhook %s: dropped batch %s (%d events) published after close; "
                             "the events stay in the ledger", self._where, batch.msg_id, batch.events)
                return
            if len(self._queue) >= self.options.queue_batches_max:
                oldest = self._queue.popleft()
                self._count(dropped=1, dropped_events=oldest.events)
                _log.warning("webhook %s: queue full (%d batches); dropped the oldest, %s (%d events), "
                             "%d dropped so far; the events stay in the ledger", self._where,
                             self.options.queue_batches_max, oldest.msg_id, oldest.events, self._stats.dropped)
            self._queue.append(batch)
            self._cond.notify()

    def stats(self) -> WebhookStats:
        """The counters now (a consistent snapshot)."""
        with self._cond:
            return replace(self._stats, queued=len(self._queue))

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued, waiting at most ``timeout_s`` seconds; then drop the rest (counted).

        An attempt in flight when time runs out ends by its own ``timeout_s`` on the
        daemon thread; no new attempt starts. Idempotent.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(timeout_s, 0.0))
        if self._thread.is_alive():
            self._abort.set()
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._count(dropped=len(left), dropped_events=sum(b.events for b in left))
            self._cond.notify_all()
        if left:
            _log.warning("webhook %s: close gave up after %.1f s; dropped %d queued batch(es); "
                         "the events stay in the ledger", self._where, timeout_s, len(left))

    def _count(self, **increments: int) -> None:
        # Called with self._cond held.
        self._stats = replace(self._stats, **{k: getattr(self._stats, k) + v for k, v in increments.items()})

    # -- delivery thread -----------------------------------------------------------------------

    def _next(self) -> _Batch | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._abort.is_set() or not self._queue:
                return None
            return self._queue.popleft()

    def _run(self) -> None:
        try:
            client = httpx.Client(timeout=httpx.Timeout(self.options.timeout_s), follow_redirects=False)
        except Exception:
            _log.exception("webhook %s: cannot make an HTTP client; nothing will be delivered", self._where)
            return
        with client:
            while (batch := self._next()) is not None:
                try:
                    self._deliver(client, batch)
                except Exception:
                    with self._cond:
                        self._count(failed=1, failed_events=batch.events)
                    _log.exception("webhook %s: batch %s failed unexpectedly", self._where, batch.msg_id)

    def _deliver(self, client: httpx.Client, batch: _Batch) -> None:
        opts = self.options
        retrying = Retrying(
            stop=stop_after_attempt(opts.max_attempts) | stop_when_event_set(self._abort),
            wait=self._wait, retry=retry_if_result(lambda attempt: attempt.retryable),
            sleep=self._sleep, before_sleep=self._on_retry,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None)
        body = batch_body(batch.items, created_at=batch.created_at)
        attempt: _Attempt | None = retrying(self._attempt, client, batch.msg_id, body)
        with self._cond:
            if attempt is not None and attempt.delivered:
                self._count(delivered=1, delivered_events=batch.events)
                return
            self._count(failed=1, failed_events=batch.events)
        _log.warning("webhook %s: gave up on batch %s (%d events): %s; the events stay in the ledger",
                     self._where, batch.msg_id, batch.events, attempt.describe() if attempt else "no attempt")

    def _attempt(self, client: httpx.Client, msg_id: str, body: bytes) -> _Attempt:
        if self._abort.is_set():
            return _Attempt(error="close() timed out")
        timestamp_s = int(self._wall.now().timestamp())
        headers = {"content-type": "application/json", **signature_headers(self._key, msg_id, timestamp_s, body)}
        try:
            response = client.post(self.url, content=body, headers=headers)
        except _RETRYABLE_ERRORS as exc:
            return _Attempt(error=f"{type(exc).__name__}: {exc}", transient=True)
        except httpx.HTTPError as exc:
            return _Attempt(error=f"{type(exc).__name__}: {exc}")
        return _Attempt(status=response.status_code, retry_after_s=_retry_after_s(response))

    def _wait(self, state: RetryCallState) -> float:
        jittered = float(self._backoff(state))
        attempt = state.outcome.result() if state.outcome and not state.outcome.failed else None
        if isinstance(attempt, _Attempt) and attempt.retry_after_s is not None:
            return min(max(jittered, attempt.retry_after_s), self.options.backoff_max_s)
        return jittered

    def _sleep(self, seconds: float) -> None:
        self._abort.wait(seconds)

    def _on_retry(self, state: RetryCallState) -> None:
        with self._cond:
            self._count(retried=1)
        attempt = state.outcome.result() if state.outcome and not state.outcome.failed else None
        _log.info("webhook %s: attempt %d failed (%s); retrying", self._where, state.attempt_number,
                  attempt.describe() if isinstance(attempt, _Attempt) else "error")
