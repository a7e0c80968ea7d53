"""The gateway's settings: the ``[gateway]`` table of the policy TOML file.

::

    namespace = "prod"                   # the policy (see comptroller.config): budgets, caps, prices
    output_cap_tokens = 4096

    [gateway]
    body_bytes_max = 1048576             # a larger request body is refused (400) before parsing
    connect_timeout_s = 5.0              # upstream connect timeout
    read_timeout_s = 600.0               # upstream: longest wait for the next bytes
    connect_retries = 2                  # retries on connection errors only (never after bytes were sent)
    admin_key_env = "COMPTROLLER_ADMIN_KEY"   # an admin key from the environment (optional)
    metrics_token_env = "COMPTROLLER_METRICS_TOKEN"  # a scrape token for /metrics (optional; else admin key)
    metrics_tenants_top = 20             # /metrics: tenants with a label of their own (the rest: tenant="other")
    ledger_timeout_s = 2.0               # a ledger call slower than this answers 503 ledger_unavailable
    key_cache_ttl_s = 10.0               # a revoked key stops working within this time
    shutdown_grace_s = 30.0              # SIGTERM: calls in flight may finish within this time
    outbox_path = "/var/lib/comptroller/outbox.db"  # outcomes kept while the ledger is down (default: beside it)
    default_provider = "openai"          # for models not in [gateway.models] (optional)

    [gateway.providers.openai]
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"       # the provider key, read from the environment at start

    [gateway.providers.local]
    base_url = "http://127.0.0.1:8000/v1"    # vLLM, llama.cpp server, Ollama: any OpenAI-compatible API

    [gateway.providers.anthropic]
    kind = "anthropic"                   # the API family: "openai" (default) or "anthropic"
    base_url = "https://api.anthropic.com/v1"
    api_key_env = "ANTHROPIC_API_KEY"    # sent as x-api-key, with anthropic-version

    [gateway.models]                     # model -> provider
    "gpt-4o-mini" = "openai"
    "llama-3.1-8b-local" = "local"

Every model a client may call is either listed in ``[gateway.models]`` or goes to
``default_provider``; it must also have a price (genai-prices or the policy's
``[prices]``), or the call is refused with 400 before anything is reserved.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from comptroller.config import ConfigError, Policy
from comptroller.ports import PriceSource
from comptroller.prices import PriceBook
from comptroller.routing import RoutingConfig

__all__ = ["GatewayConfig", "ProviderConfig", "load_gateway_config", "tier_models"]


class ProviderConfig(BaseModel):
    """One upstream of an API family.

    Attributes:
        kind: the API family it speaks: ``openai`` (OpenAI, vLLM, Ollama, OpenRouter: chat,
            responses, embeddings, completions) or ``anthropic`` (messages; its key goes in
            ``x-api-key`` with an ``anthropic-version`` header). Each API goes only to
            providers of its family; nothing is translated between families.
        base_url: the API root, ending before ``/chat/completions`` or ``/messages``
            (e.g. ``https://api.openai.com/v1``, ``https://api.anthropic.com/v1``).
        api_key_env: the environment variable holding the provider's key (None: no key sent).
        max_tokens_field: the request field that carries the output bound when the client sent
            neither ``max_tokens`` nor ``max_completion_tokens``.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["openai", "anthropic"] = "openai"
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None
    max_tokens_field: str = Field(default="max_tokens", pattern=r"^(max_tokens|max_completion_tokens)$")

    def api_key(self) -> str | None:
        """The key from the environment, or None when none is configured.

        Raises:
            ConfigError: if ``api_key_env`` names an unset variable.
        """
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ConfigError(f"the provider key variable {self.api_key_env} is not set; export it, "
                              "or remove api_key_env for an upstream that needs no key")
        return value


class GatewayConfig(BaseModel):
    """The ``[gateway]`` table, validated.

    Attributes:
        providers: upstreams by name.
        models: model -> provider name.
        default_provider: the provider of models not in ``models`` (None: such models get 400).
        body_bytes_max: the largest request body accepted, bytes.
        connect_timeout_s, read_timeout_s, write_timeout_s, pool_timeout_s: upstream timeouts, seconds.
        connect_retries: retries on connection errors only.
        pool_connections_max: open upstream connections per provider and worker.
        admin_key_env: environment variable holding an admin key (None: only stored admin keys).
        metrics_token_env: environment variable holding a scrape token for ``GET /metrics``
            (None or unset: only admin keys may scrape).
        metrics_tenants_top: in ``/metrics``' tenant families, the tenants with the most settled
            cost that get a label of their own; every other tenant is summed under ``other``, so a
            family has at most this + 1 series (:mod:`comptroller.gateway.metrics`).
        ledger_threads: never let a ledger call (or key lookup) wait on the event loop; each is
            bounded by ``ledger_timeout_s`` (the default). On SQLite an admit, settle or release
            runs on the loop when the file's write lock is free (taken without waiting), else in
            a worker thread; on PostgreSQL every call runs in a thread. False runs every call on
            the event loop: a locked file or a lost database then stalls every call of the worker
            and the outage bound cannot be kept.
        ledger_timeout_s: the longest a request waits for one ledger or key-store call, seconds,
            before it answers 503 ``ledger_unavailable`` (the call itself runs on to its end).
        key_cache_ttl_s: how long a verified API key is trusted without reading the key store,
            seconds: a key revoked on any replica stops working everywhere within this time.
        shutdown_grace_s: on SIGTERM, how long calls in flight may run on before they are cut
            off (and charged at their reserved bound), seconds.
        outbox_path: the durable outbox file shared by the workers, where call outcomes wait
            while the ledger cannot take them (:mod:`comptroller.storage.outbox`; None: beside a
            SQLite ledger, else in the state directory).
        request_log: the per-call JSON-lines access log, a file path or ``logger:NAME`` (None: off;
            :mod:`comptroller.gateway.request_log`).
        otel_spans: record an OpenTelemetry GenAI span per call (:mod:`comptroller.gateway.telemetry`).
    """

    model_config = ConfigDict(extra="forbid")
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    default_provider: str | None = None
    body_bytes_max: int = Field(default=1_048_576, ge=1024)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=600.0, gt=0)
    write_timeout_s: float = Field(default=30.0, gt=0)
    pool_timeout_s: float = Field(default=30.0, gt=0)
    connect_retries: int = Field(default=2, ge=0, le=10)
    pool_connections_max: int = Field(default=256, ge=1)
    admin_key_env: str | None = "COMPTROLLER_ADMIN_KEY"
    metrics_token_env: str | None = None
    metrics_tenants_top: int = Field(default=20, ge=1, le=1000)
    ledger_threads: bool = True
    ledger_timeout_s: float = Field(default=2.0, gt=0, le=60)
    key_cache_ttl_s: float = Field(default=10.0, ge=0, le=300)
    shutdown_grace_s: float = Field(default=30.0, ge=0, le=3600)
    outbox_path: str | None = None
    request_log: str | None = Field(default=None, min_length=1)  # JSON lines per call: a path or logger:NAME
    otel_spans: bool = False  # an OpenTelemetry GenAI span per call (comptroller.gateway.telemetry)

    @model_validator(mode="after")
    def _providers_exist(self) -> GatewayConfig:
        names = set(self.providers)
        for model, provider in self.models.items():
            if provider not in names:
                raise ValueError(f"models.{model!r} names provider {provider!r}, which is not among "
                                 f"[gateway.providers]: {sorted(names)}")
        if self.default_provider is not None and self.default_provider not in names:
            raise ValueError(f"default_provider {self.default_provider!r} is not among [gateway.providers]: "
                             f"{sorted(names)}")
        return self

    def provider_for(self, model: str) -> str | None:
        """The provider name serving ``model``, or None if no provider does."""
        return self.models.get(model, self.default_provider)

    def metrics_token(self) -> str | None:
        """The scrape token from ``metrics_token_env``, or None when unset or empty."""
        if self.metrics_token_env is None:
            return None
        return os.environ.get(self.metrics_token_env) or None

    def admin_key(self) -> str | None:
        """The admin key from ``admin_key_env``, or None when unset or empty."""
        if self.admin_key_env is None:
            return None
        return os.environ.get(self.admin_key_env) or None


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def _policy(data: dict[str, Any], source: str) -> Policy:
    try:
        policy = Policy.model_validate({**data, "source": source})
        policy.budget_list()
        policy.caps()
        policy.defenses()
        policy.group_definitions()
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_problems(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return policy


def tier_models(routing: RoutingConfig, config: GatewayConfig, prices: PriceSource) -> dict[str, str]:
    """Each cascade tier model's priced id -> the model name sent upstream (``cascade/<name>`` models).

    Raises:
        ConfigError: a tier model no provider serves, or two names of one priced model.
    """
    names: dict[str, str] = {}
    for cascade in routing.cascades.values():
        for tier in cascade.tiers:
            for model in tier.models:
                where = f"[cascades.{cascade.name}] tier {tier.name!r}"
                if config.provider_for(model) is None:
                    raise ConfigError(f"{where}: no provider serves model {model!r}; add it to [gateway.models] "
                                      "or set [gateway] default_provider")
                priced = prices.resolve(model)
                if names.setdefault(priced, model) != model:
                    raise ConfigError(f"{where}: models {names[priced]!r} and {model!r} are the same priced model "
                                      f"{priced!r}; use one name in every cascade")
    return names


def load_gateway_config(path: str | Path | None) -> tuple[Policy, GatewayConfig]:
    """Read one TOML file: the policy (every table but ``[gateway]``) and the gateway settings.

    Args:
        path: the file; None gives the empty policy and a gateway with no providers.

    Cascades and routing rules are checked too: every tier model priced, and served by a
    provider (:func:`tier_models`).

    Raises:
        ConfigError: naming the file and the field at fault.
    """
    if path is None:
        return Policy(namespace="default"), GatewayConfig()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    gateway_data = data.pop("gateway", {})
    policy = _policy(data, str(path))
    try:
        gateway = GatewayConfig.model_validate(gateway_data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: gateway.{_problems(exc)}") from None
    prices = PriceBook(overrides=policy.price_overrides(), aliases=policy.aliases)
    try:
        tier_models(policy.routing_config(prices), gateway, prices)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ValueError as exc:  # RoutingConfigError: its message names the file already
        raise ConfigError(str(exc)) from None
    return policy, gateway
