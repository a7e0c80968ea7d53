"""The price book: a model label -> its :class:`ModelPrice` at a moment.

Resolution order for a label:

1. ``aliases`` (configured): a recorded label -> another label or model id,
   followed for fewer than 8 hops (e.g. ``ModelType.GPT_3_5_TURBO`` -> ``gpt-3.5-turbo-16k``);
2. ``overrides`` (configured): a price for a local or custom model, or a
   replacement for genai-prices' price of a known one (e.g. the price billed in 2023);
3. genai-prices' bundled snapshot (offline; never fetched at run time), priced at
   the call's timestamp, since genai-prices keeps dated price changes; or a newer
   genai-prices data file the user downloaded (:func:`load_prices_data`, ``--prices-data``),
   so prices can be updated without upgrading the package.

An unknown label is an :class:`UnknownModelError` that names the closest known
names and how to configure a price.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pydantic
from genai_prices import data_snapshot, types

from comptroller.domain.pricing import ModelPrice, Rate, TieredRate

__all__ = ["PriceBook", "PricesDataError", "UnknownModelError", "load_prices_data"]

_MAX_ALIAS_HOPS = 8
# Providers that sell their own models, asked first when genai-prices cannot infer the provider.
_FIRST_PARTY = frozenset({"openai", "anthropic", "google", "mistral", "cohere", "voyageai", "deepseek", "x-ai",
                          "meta", "moonshotai", "zai", "minimax"})
_SOURCE = f"genai-prices {version('genai-prices')}"


class UnknownModelError(LookupError):
    """A model label has no price: neither configured nor in genai-prices."""

    def __init__(self, model: str, suggestions: list[str]) -> None:
        self.model = model
        self.suggestions = suggestions
        near = f" Closest known names: {', '.join(suggestions)}." if suggestions else ""
        super().__init__(
            f"unknown model {model!r}: no configured price and not in genai-prices.{near} "
            f"Map it with an alias ([aliases] \"{model}\" = \"<known model>\") or price it in the "
            f"price-override TOML ([prices.\"{model}\"] input_mtok = \"0.50\", output_mtok = \"1.50\")."
        )


class PricesDataError(ValueError):
    """A ``--prices-data`` file is not a genai-prices data file."""


def load_prices_data(path: str | Path) -> data_snapshot.DataSnapshot:
    """A genai-prices data snapshot from a file in the package's own JSON format.

    The format is the provider list genai-prices publishes and its ``UpdatePrices``
    fetches (``genai_prices.update_prices.DEFAULT_UPDATE_URL``: ``prices/.../data.json``
    in pydantic/genai-prices): ``[{"id", "name", "api_pattern", "models": [{"id",
    "match", "prices": {"input_mtok", "output_mtok", ...} or dated price list}]}]``.
    It is parsed by the loader ``UpdatePrices.fetch`` itself uses
    (``genai_prices.types._providers_from_raw``: the package exposes no public name for
    it), so any file that version of genai-prices accepts is accepted here. Nothing is
    fetched: download the file yourself.

    Raises:
        PricesDataError: naming the file and what is wrong with it.
        FileNotFoundError: for a missing file.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PricesDataError(f"{path}: not JSON ({exc.msg}); --prices-data takes genai-prices' data.json") from None
    if not isinstance(raw, list):
        raise PricesDataError(f"{path}: expected genai-prices' JSON list of providers, got {type(raw).__name__}")
    try:
        providers = types._providers_from_raw(raw)
    except pydantic.ValidationError as exc:
        raise PricesDataError(f"{path}: not a genai-prices data file for genai-prices {version('genai-prices')}: "
                              f"{exc.error_count()} errors, first: {exc.errors()[0]['loc']}: "
                              f"{exc.errors()[0]['msg']}") from None
    return data_snapshot.DataSnapshot(providers=providers, from_auto_update=False)


def _rate(value: Any) -> Rate | None:
    if value is None:
        return None
    if isinstance(value, types.TieredPrices):
        return TieredRate(Decimal(value.base), tuple((t.start, Decimal(t.price)) for t in value.tiers))
    return Decimal(value)


class PriceBook:
    """Resolves labels to prices from overrides, aliases and genai-prices.

    Args:
        overrides: model id -> price (takes precedence over genai-prices).
        aliases: label -> label or model id.
        snapshot: genai-prices data to price from (default: the bundled snapshot);
            see :func:`load_prices_data`.
        snapshot_name: how prices from ``snapshot`` are sourced in reports (its file name).

    Raises:
        ValueError: on an alias cycle or chain longer than 8 hops (at lookup).
    """

    def __init__(self, *, overrides: Mapping[str, ModelPrice] | None = None,
                 aliases: Mapping[str, str] | None = None, snapshot: data_snapshot.DataSnapshot | None = None,
                 snapshot_name: str | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._aliases = dict(aliases or {})
        self._snapshot = snapshot or data_snapshot.get_snapshot()
        self._snapshot_name = snapshot_name
        self._source = _SOURCE if snapshot is None else f"genai-prices data {snapshot_name or '(file)'}"
        self._models: dict[str, types.ModelInfo] = {}
        self._converted: dict[tuple[str, int], ModelPrice] = {}
        self._resolved: dict[str, str] = {}

    def with_config(self, *, overrides: Mapping[str, ModelPrice], aliases: Mapping[str, str]) -> PriceBook:
        """A new book with more overrides and aliases layered on top of this one's."""
        return PriceBook(overrides={**self._overrides, **overrides}, aliases={**self._aliases, **aliases},
                         snapshot=self._snapshot, snapshot_name=self._snapshot_name)

    def resolve(self, model: str) -> str:
        """Follow aliases to a model id, checking that it has a price.

        Raises:
            UnknownModelError: if the result is neither overridden nor in genai-prices.
            ValueError: on an alias cycle.
        """
        cached = self._resolved.get(model)
        if cached is not None:
            return cached
        label = model
        for _ in range(_MAX_ALIAS_HOPS):
            if label not in self._aliases:
                break
            label = self._aliases[label]
        else:
            raise ValueError(f"alias chain from {model!r} is longer than {_MAX_ALIAS_HOPS} hops or cyclic")
        if label not in self._overrides:
            self._model_info(label)
        self._resolved[model] = label
        return label

    def _model_info(self, model_id: str) -> types.ModelInfo:
        info = self._models.get(model_id)
        if info is None:
            try:
                _, info = self._snapshot.find_provider_model(model_id, None, None, None)
            except LookupError:
                info = self._any_provider_model(model_id)
            self._models[model_id] = info
        return info

    def _any_provider_model(self, model_id: str) -> types.ModelInfo:
        """The model from the first provider that lists it, first-party providers first.

        genai-prices infers the provider from the model name with each provider's
        ``model_match``; OpenAI's matches ``gpt-*``, ``o1/3/4*``, ``tts-1*`` and ``whisper-1``
        only, so ``text-embedding-3-small`` (which OpenAI lists, input only) finds no provider
        that way. Each provider's own ``find_model`` is then asked, first-party providers
        before resellers (whose prices may differ).
        """
        providers = sorted(self._snapshot.providers, key=lambda p: (p.id not in _FIRST_PARTY, p.id))
        for provider in providers:
            info = provider.find_model(model_id.lower(), all_providers=self._snapshot.providers)
            if info is not None:
                return info
        raise UnknownModelError(model_id, self._suggest(model_id))

    def price(self, model: str, at: datetime) -> ModelPrice:
        """The price of a label at ``at`` (aware UTC).

        Raises:
            UnknownModelError: for an unknown label.
        """
        model_id = self.resolve(model)
        override = self._overrides.get(model_id)
        if override is not None:
            return override
        info = self._model_info(model_id)
        raw = info.get_prices(at)
        key = (model_id, id(raw))
        converted = self._converted.get(key)
        if converted is None:
            converted = self._convert(model_id, info, raw)
            self._converted[key] = converted
        return converted

    def batch_price(self, model: str, at: datetime) -> ModelPrice | None:
        """genai-prices' batch price of a label at ``at`` (its ``processing = batch`` variant), or None.

        None when the model's price is configured here (an override replaces genai-prices'
        prices, batch ones included) or genai-prices has no batch price for it at ``at``.

        Raises:
            UnknownModelError: for an unknown label.
        """
        model_id = self.resolve(model)
        if model_id in self._overrides:
            return None
        info = self._model_info(model_id)
        batch = info.get_prices(at, {"processing": "batch"})
        if batch == info.get_prices(at):
            return None
        return self._convert(model_id, info, batch)

    def _convert(self, model_id: str, info: types.ModelInfo, raw: types.ModelPrice) -> ModelPrice:
        input_rate, output_rate = _rate(raw.input_mtok), _rate(raw.output_mtok)
        if input_rate is None and output_rate is None:
            raise UnknownModelError(model_id, [])
        return ModelPrice(
            model=info.id,
            input_mtok=input_rate if input_rate is not None else Decimal(0),
            output_mtok=output_rate if output_rate is not None else Decimal(0),
            cache_read_mtok=_rate(raw.cache_read_mtok),
            cache_write_mtok=_rate(raw.cache_write_mtok),
            cache_write_1h_mtok=_rate(raw.cache_write_1h_mtok),
            source=self._source,
            context_window=info.context_window,
        )

    def _suggest(self, model: str) -> list[str]:
        names = set(self._overrides) | set(self._aliases)
        for provider in self._snapshot.providers:
            names.update(m.id for m in provider.models)
        return difflib.get_close_matches(model.lower(), sorted(names), n=3, cutoff=0.5)
