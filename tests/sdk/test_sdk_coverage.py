"""Every public method of the installed openai and anthropic clients is metered, free, or refused, by name.

The walk reads the installed packages (no network: the clients point at a closed port and
no method is called except the refusals, which raise before sending), so a new SDK release
that adds a method fails here until someone classifies it in ``comptroller.sdk.catalog``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from sdk_kit import comptroller_with, sdk_policy

from comptroller.sdk import Comptroller, UnmeteredCallError
from comptroller.sdk.catalog import METERED, Kind, classify

CLIENTS = [openai.OpenAI, openai.AsyncOpenAI, anthropic.Anthropic, anthropic.AsyncAnthropic]
CLOSED = "http://127.0.0.1:9"  # discard port: nothing listens, and nothing is sent anyway


def _is_resource(value: Any, package: str) -> bool:
    return type(value).__module__.startswith(f"{package}.resources")


def public_methods(obj: Any, package: str, path: str = "") -> Iterator[str]:
    """Dotted names of every public method of ``obj`` and of the resources under it (depth first)."""
    cls = type(obj)
    for name in sorted(dir(cls)):
        if name.startswith("_") or name in ("with_raw_response", "with_streaming_response"):
            continue
        static = inspect.getattr_static(cls, name)
        if isinstance(static, functools.cached_property | property):
            value = getattr(obj, name)
            if _is_resource(value, package):
                yield from public_methods(value, package, f"{path}{name}.")
        elif inspect.isfunction(static):
            yield f"{path}{name}"


def resolve(root: Any, dotted: str) -> Any:
    """The attribute at ``dotted`` under ``root``."""
    return functools.reduce(getattr, dotted.split("."), root)


@pytest.fixture
def comptroller(tmp_path: Path) -> Comptroller:
    """A Comptroller with a $0 tenant budget (nothing could be spent even if a call slipped through)."""
    return comptroller_with(tmp_path, sdk_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 0}]))


@pytest.mark.parametrize("client_class", CLIENTS, ids=lambda c: f"{c.__module__.split('.')[0]}.{c.__name__}")
def test_every_public_method_is_classified(client_class: type) -> None:
    """The walk finds the installed client's methods, and each one is in one of the three lists."""
    package = client_class.__module__.split(".")[0]
    names = set(public_methods(client_class(api_key="unused", base_url=CLOSED), package))
    assert len(names) > 50 and METERED[package] & names, "the walk found too few methods: is it broken?"
    unclassified = sorted(n for n in names if classify(package, n) is None)
    assert not unclassified, f"classify these {package} methods in comptroller.sdk.catalog: {unclassified}"


@pytest.mark.parametrize("client_class", CLIENTS, ids=lambda c: f"{c.__module__.split('.')[0]}.{c.__name__}")
def test_the_wrapped_client_applies_each_list(client_class: type, comptroller: Comptroller) -> None:
    """Through the wrapper a metered method is replaced, a free one is the client's own, a refused one raises."""
    package = client_class.__module__.split(".")[0]
    client = client_class(api_key="unused", base_url=CLOSED, max_retries=0)
    wrapped = comptroller.wrap(client)
    for name in public_methods(client, package):
        kind, inner, seen = classify(package, name), resolve(client, name), resolve(wrapped, name)
        if kind is Kind.FREE and name not in ("copy", "with_options", "with_middleware"):
            assert seen == inner, name
        elif kind is Kind.METERED:
            assert seen != inner and callable(seen), name
        elif kind is Kind.REFUSED:
            with pytest.raises(UnmeteredCallError) as caught:
                seen()
            assert caught.value.method == name


@pytest.mark.parametrize("client_class", CLIENTS, ids=lambda c: f"{c.__module__.split('.')[0]}.{c.__name__}")
def test_raw_variants_of_metered_methods_are_refused(client_class: type, comptroller: Comptroller) -> None:
    """``with_raw_response`` / ``with_streaming_response`` of a metered method raise; of a free one pass through."""
    package = client_class.__module__.split(".")[0]
    wrapped = comptroller.wrap(client_class(api_key="unused", base_url=CLOSED, max_retries=0))
    create = "chat.completions" if package == "openai" else "messages"
    for variant in ("with_raw_response", "with_streaming_response"):
        with pytest.raises(UnmeteredCallError, match="raw response"):
            resolve(wrapped, f"{create}.{variant}.create")(model="m", messages=[])
        with pytest.raises(UnmeteredCallError, match="raw response"):
            resolve(wrapped, f"{variant}.{create}.create")(model="m", messages=[])
        assert callable(resolve(wrapped, f"models.{variant}.list"))


def test_private_attributes_and_raw_http_are_not_handed_out(comptroller: Comptroller) -> None:
    """The HTTP client under the SDK and its post/request helpers cannot be reached through the wrapper."""
    wrapped = comptroller.wrap(openai.OpenAI(api_key="unused", base_url=CLOSED, max_retries=0))
    with pytest.raises(AttributeError, match="allow_unmetered"):
        _ = wrapped._client
    with pytest.raises(AttributeError, match="allow_unmetered"):
        _ = wrapped.chat.completions._post
    with pytest.raises(UnmeteredCallError):
        wrapped.post("/chat/completions", body={}, cast_to=object)
    copied = wrapped.with_options(timeout=5)
    with pytest.raises(UnmeteredCallError):
        copied.images.generate(prompt="a cat")
    assert str(wrapped.base_url).startswith(CLOSED)
