"""The ``[notify]`` section of a policy file: which sinks get events, and how webhooks deliver.

::

    [notify]
    log = true                    # one JSON line per event on logger "comptroller.events"
    log_level = "INFO"            # DEBUG | INFO | WARNING | ERROR

    [[notify.webhooks]]
    url = "https://ops.example.com/hooks/comptroller"
    secret_env = "COMPTROLLER_WEBHOOK_SECRET"   # or: secret = "whsec_..." (keep it out of git)
    timeout_s = 5.0               # per attempt: connect, write, read
    max_attempts = 5              # first try included
    backoff_initial_s = 0.5       # exponential backoff with full jitter ...
    backoff_max_s = 30.0          # ... capped here (also caps a Retry-After)
    queue_batches_max = 1000      # when full the oldest undelivered batch is dropped
    batch_events_max = 100        # a larger publish is split into several batches
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from comptroller.notify.signing import decode_secret

__all__ = ["NotifyConfig", "WebhookConfig", "WebhookOptions", "check_webhook_url"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def check_webhook_url(url: str) -> str:
    """``url`` unchanged if it is an absolute http(s) URL with a host, else ValueError saying what to write."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook url must be an absolute http:// or https:// URL with a host, got {url!r}")
    return url


class WebhookOptions(BaseModel):
    """How a webhook sink delivers: timeouts, retry bound and backoff, queue and batch bounds.

    Attributes:
        timeout_s: per-attempt limit on connect, write, read and pool waits, seconds (0 < t <= 60).
        max_attempts: attempts per batch, the first included (1 to 20).
        backoff_initial_s: the first retry waits up to this long; each later one up to twice
            the previous bound (full jitter: AWS Architecture Blog, "Exponential Backoff And
            Jitter", 2015), seconds (>= 0).
        backoff_max_s: the bound on any one wait, also on a server's Retry-After, seconds.
        queue_batches_max: undelivered batches kept in memory; beyond it the oldest is dropped.
        batch_events_max: events per request; a larger publish is split (1 to 10,000).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(default=5.0, gt=0, le=60)
    max_attempts: int = Field(default=5, ge=1, le=20)
    backoff_initial_s: float = Field(default=0.5, ge=0, le=3600)
    backoff_max_s: float = Field(default=30.0, ge=0, le=3600)
    queue_batches_max: int = Field(default=1000, ge=1, le=1_000_000)
    batch_events_max: int = Field(default=100, ge=1, le=10_000)

    @model_validator(mode="after")
    def _backoff_bounds(self) -> Self:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_initial_s "
                             f"({self.backoff_initial_s})")
        return self


class WebhookConfig(WebhookOptions):
    """One webhook subscriber: where to POST, the signing secret (inline or from the environment), options.

    Exactly one of ``secret`` and ``secret_env`` is given. ``secret_env`` names an
    environment variable read when the sinks are built (:func:`sinks_from_config`).
    """

    url: str
    secret: SecretStr | None = None
    secret_env: str | None = Field(default=None, min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_webhook_url(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_secret(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> Self:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret = \"whsec_...\" or secret_env = \"VARIABLE_NAME\"")
        return self

    def options(self) -> WebhookOptions:
        """The delivery options alone."""
        return WebhookOptions.model_validate(self.model_dump(include=set(WebhookOptions.model_fields)))

    def resolve_secret(self, environ: Mapping[str, str] | None = None) -> str:
        """The secret text, read from ``environ`` (default ``os.environ``) when ``secret_env`` is set.

        Raises:
            ValueError: the variable is unset or empty, or holds an invalid secret.
        """
        if self.secret is not None:
            return self.secret.get_secret_value()
        assert self.secret_env is not None
        value = (os.environ if environ is None else environ).get(self.secret_env, "")
        if not value:
            raise ValueError(f"webhook {self.url}: environment variable {self.secret_env} (secret_env) is "
                             "unset or empty; export the whsec_... secret there")
        decode_secret(value)
        return value


class NotifyConfig(BaseModel):
    """Where events go: a structured log line each (``log``), and any number of webhooks (at most 16)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log: bool = True
    log_level: LogLevel = "INFO"
    webhooks: list[WebhookConfig] = Field(default_factory=list, max_length=16)

    def log_level_number(self) -> int:
        """``log_level`` as a stdlib logging number."""
        return logging.getLevelNamesMapping()[self.log_level]
