"""The wrapped client: a proxy over the client and every resource under it, with no way around the meter.

:func:`govern` returns a :class:`Governed` proxy. Each attribute read through it is
decided by its dotted name on the client (``chat.completions.create``):

* a resource (``chat``, ``chat.completions``, ``with_raw_response``) comes back as a
  proxy of its own, so names are decided however deep they are;
* a method is looked up in :mod:`comptroller.sdk.catalog`: a metered one comes back
  wrapped (admit, then settle), a free one unchanged (``copy``/``with_options`` return a
  governed client), any other one as a function raising
  :class:`~comptroller.sdk.errors.UnmeteredCallError` when called, unless the user
  allowed that name (``allow_unmetered``); a metered method under ``with_raw_response``
  or ``with_streaming_response`` is refused too (a raw response is not settled);
* a private attribute (``_client``, the HTTP client under the SDK; ``_post``) is not
  handed out unless allowed by name: it would reach the network around the meter;
* plain data (``base_url``, ``api_key``, ``max_retries``) passes through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from comptroller.sdk.catalog import RAW_VARIANTS, Kind, classify
from comptroller.sdk.errors import UnmeteredCallError

__all__ = ["Governed", "Rules", "govern"]

_CLIENT_FACTORIES = frozenset({"copy", "with_options", "with_middleware"})


@dataclass(frozen=True, slots=True)
class Rules:
    """How one wrapped client decides its methods.

    Attributes:
        package: ``openai`` or ``anthropic`` (whose lists apply).
        metered: metered method name -> a function wrapping the client's method.
        allowed: names the user lets through unmetered.
    """

    package: str
    metered: Mapping[str, Callable[[Callable[..., Any]], Callable[..., Any]]]
    allowed: frozenset[str]


def _refusal(method: str, reason: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise UnmeteredCallError(method, reason)
    refuse.__name__ = method.rsplit(".", 1)[-1]
    return refuse


class Governed:
    """A proxy of a client or of one of its resources (see the module docstring).

    Args:
        inner: the client or resource.
        path: its dotted name on the client plus a dot (``""`` for the client itself).
        rules: the client's lists and metered methods.
    """

    _inner: Any
    _path: str
    _rules: Rules

    def __init__(self, inner: Any, path: str, rules: Rules) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_rules", rules)

    def _is_resource(self, value: Any) -> bool:
        module = type(value).__module__
        package = self._rules.package
        return not callable(value) and (module.startswith(f"{package}.resources")
                                        or module == f"{package}._client")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = self._path + name
        rules = self._rules
        if name.startswith("_") and full not in rules.allowed:
            raise AttributeError(f"{full}: a private attribute of a governed client is not handed out (it could "
                                 f"reach the provider unmetered); allow it by name with allow_unmetered={{{full!r}}}")
        value = getattr(self._inner, name)
        if full in rules.allowed:
            return value
        if self._is_resource(value):
            return Governed(value, full + ".", rules)
        if not callable(value):
            return value
        return self._method(full, value)

    def _method(self, full: str, value: Callable[..., Any]) -> Callable[..., Any]:
        rules = self._rules
        parts = full.split(".")
        plain = ".".join(p for p in parts if p not in RAW_VARIANTS)
        raw = len(parts) != len(plain.split("."))
        kind = classify(rules.package, plain)
        if kind is Kind.FREE:
            if plain in _CLIENT_FACTORIES and not raw:
                def factory(*args: Any, **kwargs: Any) -> Governed:
                    return Governed(value(*args, **kwargs), "", rules)
                return factory
            return value
        if kind is Kind.METERED and not raw:
            return rules.metered[plain](value)
        if kind is Kind.METERED:
            reason = "a raw response is not metered (its usage is not settled); call the plain method"
        elif kind is Kind.REFUSED:
            reason = f"{rules.package} method that may bill and that comptroller does not meter" + (
                "; send batches through the comptroller gateway (/v1/batches, /v1/messages/batches), which "
                "reserves the whole batch at create and settles it per custom_id" if ".batches." in f".{plain}"
                else "")
        else:
            reason = (f"a {rules.package} method comptroller has not classified (new in this SDK version?): it "
                      "is refused until it is listed as metered or free in comptroller.sdk.catalog")
        return _refusal(full, reason)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def __dir__(self) -> list[str]:
        return [n for n in dir(self._inner) if not n.startswith("_")]

    def __repr__(self) -> str:
        return f"<governed {self._rules.package} {self._path.rstrip('.') or 'client'}: {self._inner!r}>"

    def __enter__(self) -> Governed:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inner.__exit__(*exc)

    async def __aenter__(self) -> Governed:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)


def govern(client: Any, rules: Rules) -> Governed:
    """The governed proxy of ``client``."""
    return Governed(client, "", rules)
