"""LogSink lines, FanOut isolation, the [notify] config model and sinks_from_config."""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from webhook_receiver import Receiver

import comptroller.notify
from comptroller.domain.ledger import Event
from comptroller.notify import (
    EVENTS_LOGGER,
    EventSink,
    FanOut,
    LogSink,
    NotifyConfig,
    WebhookConfig,
    WebhookSink,
    generate_secret,
    sinks_from_config,
    verify_signature,
)
from comptroller.notify import config as config_module

T0 = datetime(2026, 11, 21, 16, 0, 5, 250000, tzinfo=UTC)
KILL = Event(ts=T0, kind="kill_switch", code="tripped", level="namespace", scope="acme",
             detail={"spend_mc": 5_000_000, "threshold_mc": 4_000_000, "manual": False})
REFUSAL = Event(ts=T0, kind="refusal", code="circuit_open", detail={"retry_after_s": 5.0})


def test_log_sink_writes_one_json_line_per_event(caplog: pytest.LogCaptureFixture) -> None:
    """Each event becomes one log record on comptroller.events whose message is the event as JSON."""
    with caplog.at_level(logging.INFO, logger=EVENTS_LOGGER):
        LogSink().publish([KILL, REFUSAL])
    records = [r for r in caplog.records if r.name == EVENTS_LOGGER]
    assert len(records) == 2
    assert all("\n" not in r.getMessage() for r in records)
    first = json.loads(records[0].getMessage())
    assert first == {"ts": "2026-11-21T16:00:05.250000Z", "kind": KILL.kind, "code": KILL.code,
                     "level": KILL.level, "scope": KILL.scope, "detail": KILL.detail}
    assert records[0].__dict__["event"] == first
    assert json.loads(records[1].getMessage())["level"] is None
    assert records[0].levelno == logging.INFO


def test_log_sink_level_is_configurable_and_respected(caplog: pytest.LogCaptureFixture) -> None:
    """A sink at WARNING logs at WARNING; a sink at DEBUG writes nothing when the logger is at INFO."""
    with caplog.at_level(logging.INFO, logger=EVENTS_LOGGER):
        LogSink(level=logging.WARNING).publish([KILL])
        LogSink(level=logging.DEBUG).publish([REFUSAL])
    records = [r for r in caplog.records if r.name == EVENTS_LOGGER]
    assert [(r.levelno, json.loads(r.getMessage())["kind"]) for r in records] == [(logging.WARNING, "kill_switch")]


class _BrokenSubscriber:
    """A third-party sink that fails on every call (what FanOut must survive)."""

    def publish(self, events: Sequence[Event]) -> None:
        raise RuntimeError("subscriber is down")

    def close(self, timeout_s: float = 5.0) -> None:
        raise RuntimeError("subscriber is down")


def test_fan_out_isolates_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    """A sink that raises is logged and skipped; the sinks after it still get every event, and nothing raises."""
    with caplog.at_level(logging.INFO):
        fan = FanOut([_BrokenSubscriber(), LogSink()])
        fan.publish([KILL])
        fan.close(timeout_s=1)
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == EVENTS_LOGGER]
    assert [e["kind"] for e in logged] == ["kill_switch"]
    failures = [r for r in caplog.records if r.name == "comptroller.notify.sink"]
    assert len(failures) == 2 and "_BrokenSubscriber" in failures[0].getMessage()


def test_sinks_satisfy_the_port() -> None:
    """LogSink, WebhookSink and FanOut are EventSinks (runtime-checkable protocol)."""
    receiver = Receiver()
    try:
        webhook = WebhookSink(receiver.url, generate_secret())
        assert all(isinstance(s, EventSink) for s in (LogSink(), webhook, FanOut([])))
        webhook.close(timeout_s=5)
    finally:
        receiver.close()


def test_docstring_example_parses_to_the_documented_defaults() -> None:
    """The [notify] example in the config module's docstring is valid and matches the defaults."""
    example = (config_module.__doc__ or "").split("::", 1)[1]
    section = tomllib.loads(example)["notify"]
    parsed = NotifyConfig.model_validate(section)
    hook = parsed.webhooks[0]
    assert hook.secret_env == "COMPTROLLER_WEBHOOK_SECRET"
    assert hook.options() == WebhookConfig(url=hook.url, secret_env="X").options()


def test_sinks_from_config_builds_what_is_asked_and_delivers(caplog: pytest.LogCaptureFixture) -> None:
    """log + one webhook (secret from the environment) yields a LogSink and a WebhookSink that signs with it."""
    secret = generate_secret()
    receiver = Receiver()
    try:
        config = NotifyConfig.model_validate({"log": True, "log_level": "WARNING", "webhooks": [
            {"url": receiver.url, "secret_env": "HOOK_SECRET", "max_attempts": 2, "backoff_initial_s": 0.01}]})
        sinks = sinks_from_config(config, environ={"HOOK_SECRET": secret})
        assert [type(s) for s in sinks] == [LogSink, WebhookSink]
        assert isinstance(sinks[0], LogSink) and sinks[0].level == logging.WARNING
        assert isinstance(sinks[1], WebhookSink) and sinks[1].options.max_attempts == 2
        fan = FanOut(sinks)
        with caplog.at_level(logging.WARNING, logger=EVENTS_LOGGER):
            fan.publish([KILL])
            fan.close(timeout_s=10)
        verify_signature(secret, receiver.requests[0].headers, receiver.requests[0].body)
        assert sum(r.name == EVENTS_LOGGER for r in caplog.records) == 1
    finally:
        receiver.close()


def test_no_sinks_when_nothing_is_configured() -> None:
    """log = false and no webhooks builds no sink."""
    assert sinks_from_config(NotifyConfig(log=False)) == []


def test_missing_secret_variable_is_named_and_nothing_starts() -> None:
    """An unset secret_env variable fails the build with the variable's name."""
    config = NotifyConfig.model_validate({"webhooks": [{"url": "http://127.0.0.1:9/h", "secret_env": "NOPE_SECRET"}]})
    with pytest.raises(ValueError, match="NOPE_SECRET"):
        sinks_from_config(config, environ={})


@pytest.mark.parametrize(("webhook", "message"), [
    ({"url": "http://h/x"}, "exactly one of secret"),
    ({"url": "http://h/x", "secret": generate_secret(), "secret_env": "S"}, "exactly one of secret"),
    ({"url": "mailto:ops@example.com", "secret_env": "S"}, "http:// or https://"),
    ({"url": "http://h/x", "secret": "hunter2!"}, "base64"),
    ({"url": "http://h/x", "secret_env": "S", "backoff_initial_s": 5, "backoff_max_s": 1}, "backoff_max_s"),
    ({"url": "http://h/x", "secret_env": "S", "max_attempts": 0}, "max_attempts"),
    ({"url": "http://h/x", "secret_env": "S", "timeout_s": 0}, "timeout_s"),
    ({"url": "http://h/x", "secret_env": "S", "queue_batches_max": 0}, "queue_batches_max"),
    ({"url": "http://h/x", "secret_env": "S", "retries": 3}, "retries"),
])
def test_bad_webhook_config_names_the_field(webhook: dict[str, object], message: str) -> None:
    """Each invalid webhook setting is refused with a message naming the field or what to write."""
    with pytest.raises(ValidationError, match=message):
        NotifyConfig.model_validate({"webhooks": [webhook]})


def test_inline_secret_is_not_printed() -> None:
    """A secret written inline does not appear in the config's repr (it is a SecretStr)."""
    secret = generate_secret()
    hook = WebhookConfig.model_validate({"url": "https://h/x", "secret": secret})
    assert secret not in repr(hook) and hook.resolve_secret() == secret


def test_public_names_are_exported() -> None:
    """Every name in comptroller.notify.__all__ exists."""
    assert all(hasattr(comptroller.notify, name) for name in comptroller.notify.__all__)
