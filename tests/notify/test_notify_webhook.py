"""WebhookSink against a real HTTP receiver on loopback: delivery, signatures, retries, bounds, close."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import standardwebhooks
from webhook_receiver import HANG, Receiver, Step

from comptroller.clock import VirtualClock
from comptroller.domain.ledger import Event
from comptroller.notify import (
    BATCH_TYPE,
    WebhookOptions,
    WebhookSink,
    event_to_dict,
    generate_secret,
    verify_signature,
)

SECRET = generate_secret()
T0 = datetime(2026, 11, 21, 16, 0, tzinfo=UTC)
FAST = {"timeout_s": 2.0, "backoff_initial_s": 0.005, "backoff_max_s": 0.02}


def events(n: int, first: int = 0) -> list[Event]:
    """``n`` distinct breaker events, numbered from ``first`` (the number rides in detail.seq)."""
    return [Event(ts=T0 + timedelta(seconds=i), kind="breaker", code="opened", level="agent",
                  scope=f"acme/agent:a{i}", detail={"seq": i, "window_spend_mc": 1000 * i})
            for i in range(first, first + n)]


def seqs(receiver: Receiver) -> list[list[int]]:
    """The detail.seq values of each request's events, request by request."""
    return [[e["detail"]["seq"] for e in json.loads(r.body)["data"]["events"]] for r in receiver.requests]


@pytest.fixture
def make_receiver() -> Iterator[Callable[..., Receiver]]:
    """Makes loopback receivers answering the given script; closes them after the test."""
    made: list[Receiver] = []

    def factory(*script: Step) -> Receiver:
        receiver = Receiver(script or (200,))
        made.append(receiver)
        return receiver

    yield factory
    for receiver in made:
        receiver.close()


def sink_for(receiver_url: str, **options: float) -> WebhookSink:
    """A sink to ``receiver_url`` with fast test backoff, overridden by ``options``."""
    return WebhookSink(receiver_url, SECRET, options=WebhookOptions.model_validate({**FAST, **options}))


def test_delivers_a_signed_batch_that_verifies(make_receiver: Callable[..., Receiver]) -> None:
    """One publish arrives as one POST that verifies (ours and the reference library) and holds the events."""
    receiver = make_receiver(200)
    sink = sink_for(receiver.url)
    sent = events(3)
    sink.publish(sent)
    sink.close(timeout_s=10)

    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    verify_signature(SECRET, request.headers, request.body)
    payload = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    assert payload["type"] == BATCH_TYPE
    assert payload["data"]["events"] == [event_to_dict(e) for e in sent]
    assert payload["data"]["events"][2]["ts"] == (T0 + timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["content-type"] == "application/json"
    stats = sink.stats()
    assert (stats.delivered, stats.delivered_events, stats.retried, stats.failed, stats.dropped) == (1, 3, 0, 0, 0)


def test_retries_after_500_then_succeeds_with_the_same_id(make_receiver: Callable[..., Receiver]) -> None:
    """A 500 is retried; the retry carries the same webhook-id, a fresh valid signature, and is delivered."""
    receiver = make_receiver(500, 200)
    sink = sink_for(receiver.url)
    sink.publish(events(2))
    sink.close(timeout_s=10)

    assert len(receiver.requests) == 2
    assert receiver.requests[0].headers["webhook-id"] == receiver.requests[1].headers["webhook-id"]
    assert receiver.requests[0].body == receiver.requests[1].body
    verify_signature(SECRET, receiver.requests[1].headers, receiver.requests[1].body)
    stats = sink.stats()
    assert (stats.delivered, stats.retried, stats.failed) == (1, 1, 0)


def test_429_is_retried_honouring_retry_after(make_receiver: Callable[..., Receiver]) -> None:
    """A 429 with Retry-After: 0 is retried, then delivered."""
    receiver = make_receiver((429, {"Retry-After": "0"}), 204)
    sink = sink_for(receiver.url)
    sink.publish(events(1))
    sink.close(timeout_s=10)
    assert len(receiver.requests) == 2
    assert (sink.stats().delivered, sink.stats().retried) == (1, 1)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 301])
def test_no_retry_on_a_client_error_or_redirect(make_receiver: Callable[..., Receiver], status: int) -> None:
    """A 4xx (other than 429) or 3xx answer ends the batch at once: one request, counted failed."""
    receiver = make_receiver(status, 200)
    sink = sink_for(receiver.url)
    sink.publish(events(4))
    sink.close(timeout_s=10)
    assert len(receiver.requests) == 1
    stats = sink.stats()
    assert (stats.delivered, stats.retried, stats.failed, stats.failed_events) == (0, 0, 1, 4)


def test_attempts_are_bounded(make_receiver: Callable[..., Receiver]) -> None:
    """A receiver answering 503 forever gets exactly max_attempts requests; the batch is counted failed."""
    max_attempts = 4
    receiver = make_receiver(503)
    sink = sink_for(receiver.url, max_attempts=max_attempts)
    sink.publish(events(1))
    sink.close(timeout_s=10)
    assert len(receiver.requests) == max_attempts
    stats = sink.stats()
    assert (stats.delivered, stats.retried, stats.failed) == (0, max_attempts - 1, 1)


def test_connection_refused_is_retried_and_bounded() -> None:
    """Nothing listening: each attempt fails to connect, is retried, and the batch fails after max_attempts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = sink_for(f"http://127.0.0.1:{port}/hooks", max_attempts=3)
    sink.publish(events(2))
    sink.close(timeout_s=10)
    stats = sink.stats()
    assert (stats.delivered, stats.retried, stats.failed, stats.failed_events) == (0, 2, 1, 2)


def test_a_receiver_that_never_answers_times_out(make_receiver: Callable[..., Receiver]) -> None:
    """Reads time out after timeout_s: the attempt is retried, then the batch fails; nothing hangs."""
    receiver = make_receiver(HANG)
    sink = sink_for(receiver.url, timeout_s=0.2, max_attempts=2)
    sink.publish(events(1))
    sink.close(timeout_s=10)
    assert len(receiver.requests) == 2
    stats = sink.stats()
    assert (stats.delivered, stats.retried, stats.failed) == (0, 1, 1)


def test_full_queue_drops_the_oldest_and_counts_it(make_receiver: Callable[..., Receiver],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """With the first batch in flight and the queue full, each new batch drops the oldest queued one, with a warning."""
    receiver = make_receiver(200)
    receiver.gate.clear()  # hold every answer
    sink = sink_for(receiver.url, queue_batches_max=2)
    sink.publish(events(1, first=0))
    assert receiver.wait_for(1)  # batch 0 is in flight, the queue is empty
    with caplog.at_level(logging.WARNING, logger="comptroller.notify.webhook"):
        for seq in range(1, 5):
            sink.publish(events(1, first=seq))  # queue: [1,2] then [2,3] then [3,4]
    stats = sink.stats()
    assert (stats.dropped, stats.dropped_events, stats.queued) == (2, 2, 2)
    assert sum("queue full" in r.getMessage() for r in caplog.records) == 2
    receiver.gate.set()
    sink.close(timeout_s=10)
    assert seqs(receiver) == [[0], [3], [4]]
    assert sink.stats().delivered == 3


def test_close_flushes_every_queued_batch_in_order(make_receiver: Callable[..., Receiver]) -> None:
    """close() returns only after every queued batch was delivered, oldest first."""
    receiver = make_receiver(200)
    receiver.gate.clear()
    sink = sink_for(receiver.url)
    for seq in range(6):
        sink.publish(events(1, first=seq))
    receiver.gate.set()
    sink.close(timeout_s=10)
    assert seqs(receiver) == [[seq] for seq in range(6)]
    assert (sink.stats().delivered, sink.stats().queued) == (6, 0)


def test_close_gives_up_after_its_timeout_and_counts_the_rest(make_receiver: Callable[..., Receiver]) -> None:
    """A close whose timeout passes while an attempt hangs returns, dropping (and counting) what is still queued."""
    receiver = make_receiver(HANG)
    sink = sink_for(receiver.url, timeout_s=30)
    for seq in range(3):
        sink.publish(events(2, first=10 * seq))
    assert receiver.wait_for(1)
    sink.close(timeout_s=0.05)
    stats = sink.stats()
    assert (stats.dropped, stats.dropped_events, stats.queued, stats.delivered) == (2, 4, 0, 0)


def test_publish_after_close_is_dropped_not_raised(make_receiver: Callable[..., Receiver]) -> None:
    """Publishing to a closed sink sends nothing, raises nothing, and counts the batch dropped."""
    receiver = make_receiver(200)
    sink = sink_for(receiver.url)
    sink.close(timeout_s=10)
    sink.publish(events(3))
    sink.close(timeout_s=10)  # idempotent
    assert receiver.requests == []
    assert (sink.stats().dropped, sink.stats().dropped_events) == (1, 3)


def test_large_publish_is_split_into_bounded_batches(make_receiver: Callable[..., Receiver]) -> None:
    """A publish of more than batch_events_max events goes out as ceil(n / max) requests, in order."""
    receiver = make_receiver(200)
    sink = sink_for(receiver.url, batch_events_max=4)
    sink.publish(events(10))
    sink.close(timeout_s=10)
    assert seqs(receiver) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 3
    assert (sink.stats().delivered, sink.stats().delivered_events) == (3, 10)


def test_non_json_detail_values_are_sent_as_text(make_receiver: Callable[..., Receiver]) -> None:
    """A Decimal in detail does not stop delivery: it arrives as its string."""
    receiver = make_receiver(200)
    sink = sink_for(receiver.url)
    sink.publish([Event(ts=T0, kind="alert", code="budget_80", detail={"limit_usd": Decimal("0.50")})])
    sink.close(timeout_s=10)
    assert json.loads(receiver.requests[0].body)["data"]["events"][0]["detail"] == {"limit_usd": "0.50"}


@pytest.mark.parametrize(("url", "secret", "message"), [
    ("ftp://example.com/x", SECRET, "http:// or https://"),
    ("/relative", SECRET, "http:// or https://"),
    ("http://127.0.0.1:9/x", "plain-text-secret", "base64"),
])
def test_bad_url_or_secret_is_refused_at_construction(url: str, secret: str, message: str) -> None:
    """A sink is not made (no thread started) for a bad url or secret; the message says what to write."""
    with pytest.raises(ValueError, match=message):
        WebhookSink(url, secret)


def test_concurrent_publishers_lose_nothing_uncounted(make_receiver: Callable[..., Receiver]) -> None:
    """8 threads publishing into a small queue: every event is delivered or counted dropped, none twice."""
    receiver = make_receiver(200)
    sink = sink_for(receiver.url, queue_batches_max=5)
    threads_n, per_thread = 8, 40

    def publish_all(thread: int) -> None:
        for i in range(per_thread):
            sink.publish(events(1, first=thread * per_thread + i))

    workers = [threading.Thread(target=publish_all, args=(t,)) for t in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sink.close(timeout_s=30)

    received = [seq for batch in seqs(receiver) for seq in batch]
    stats = sink.stats()
    assert len(received) == len(set(received)) == stats.delivered_events
    assert stats.delivered_events + stats.dropped_events == threads_n * per_thread
    assert stats.failed == 0
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == len(set(ids))


def test_a_virtual_clock_stamps_the_body_but_never_the_signature(make_receiver: Callable[..., Receiver]) -> None:
    """In replay the body's timestamp is virtual time; webhook-timestamp stays wall-clock, so it verifies."""
    receiver = make_receiver(200)
    virtual = VirtualClock(datetime(2024, 1, 1, tzinfo=UTC))
    sink = WebhookSink(receiver.url, SECRET, options=WebhookOptions.model_validate(FAST), clock=virtual)
    sink.publish(events(1))
    sink.close(timeout_s=10)
    request = receiver.requests[0]
    assert json.loads(request.body)["timestamp"] == "2024-01-01T00:00:00Z"
    standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)  # checks against the real clock
