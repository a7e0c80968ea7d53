"""Build the configured sinks (the ``[notify]`` section) at start-up."""

from __future__ import annotations

from collections.abc import Mapping

from comptroller.notify.config import NotifyConfig
from comptroller.notify.log import LogSink
from comptroller.notify.sink import EventSink
from comptroller.notify.webhook import WebhookSink
from comptroller.ports import Clock

__all__ = ["sinks_from_config"]


def sinks_from_config(config: NotifyConfig, *, environ: Mapping[str, str] | None = None,
                      clock: Clock | None = None) -> list[EventSink]:
    """The sinks ``config`` asks for: a :class:`LogSink` if ``log``, then one :class:`WebhookSink` per webhook.

    Args:
        config: the validated ``[notify]`` section.
        environ: where ``secret_env`` variables are read (default ``os.environ``).
        clock: the engine's clock, stamped as each webhook body's ``timestamp`` (default the
            system clock); the signed ``webhook-timestamp`` header is always wall-clock time.

    Raises:
        ValueError: a ``secret_env`` variable is unset, empty or invalid. Nothing is
            started then (secrets are resolved before any webhook thread starts).
    """
    secrets = [hook.resolve_secret(environ) for hook in config.webhooks]
    sinks: list[EventSink] = [LogSink(level=config.log_level_number())] if config.log else []
    sinks.extend(WebhookSink(hook.url, secret, options=hook.options(), clock=clock)
                 for hook, secret in zip(config.webhooks, secrets, strict=True))
    return sinks
