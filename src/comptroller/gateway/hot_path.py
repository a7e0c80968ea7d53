"""The metered API routes served before Starlette's router: the same effects, fewer layers.

A metered call (``POST /v1/chat/completions`` and the other adapters' routes) is most of a
gateway's traffic. :class:`GatewayApp` sends such a request straight to a lane built once per
route: Starlette's ``ServerErrorMiddleware`` (a 500 for an unhandled error, then raised for
the server to log), the app's own middlewares in their order (:class:`~comptroller.gateway.identity.KeyPrefetch`,
the worker's drain tracking), then the route's endpoint. What the lane leaves out is what such a
request never needed: the router's walk over every route, and the exception and
request-response wrappers, two more closures around every ``send``. An ``HTTPException`` from
the endpoint is answered as the app's exception middleware would (the app's status handlers,
else Starlette's plain answer). Everything else (other paths and methods, a ``root_path``, the
lifespan) goes through the whole Starlette stack as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["GatewayApp", "HeaderMap", "LaneRequest"]

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class GatewayApp(Starlette):
    """A Starlette app whose ``hot`` routes (POST, fixed paths) skip the router (see the module docstring).

    Args:
        hot: the routes to serve in a lane; each must also be in ``routes`` (where another method
            of the path, and a ``root_path``, still find it). Only POST routes without path parameters.
        middleware: the app's middlewares, in Starlette's order (outermost first).
        exception_handlers: the app's handlers; those keyed by a status code answer an
            ``HTTPException`` of that status from a hot route.
        kwargs: the rest of :class:`~starlette.applications.Starlette`'s arguments.

    Raises:
        ValueError: a hot route that is not a POST route with a fixed path.
    """

    def __init__(
        self,
        *,
        hot: Sequence[Route],
        middleware: Sequence[Middleware] = (),
        exception_handlers: Mapping[Any, ErrorHandler] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(middleware=middleware, exception_handlers=exception_handlers, **kwargs)
        handlers = dict(exception_handlers or {})
        status_handlers = {k: v for k, v in handlers.items() if isinstance(k, int) and k != 500}
        plain = ExceptionMiddleware(self.router)  # its http_exception: Starlette's answer to an HTTPException
        self._lanes: dict[str, ASGIApp] = {}
        for route in hot:
            if route.methods != {"POST"} or route.param_convertors:
                raise ValueError(f"a hot route is a POST route with a fixed path, not {route.path} {route.methods}")
            lane: ASGIApp = _endpoint(route, self.router, status_handlers, plain.http_exception)
            for cls, args, options in reversed(list(middleware)):
                lane = cls(lane, *args, **options)
            self._lanes[route.path] = ServerErrorMiddleware(
                lane, handler=handlers.get(500) or handlers.get(Exception), debug=self.debug
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A hot route's request to its lane; anything else to the whole Starlette stack."""
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            lane = self._lanes.get(scope["path"])
            if lane is not None:
                scope["app"] = self
                await lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class HeaderMap(Headers):
    """Starlette's request :class:`~starlette.datastructures.Headers` with dictionary lookups.

    Starlette looks a name up by scanning every header (a metered call asks for about a dozen
    names); this answers from a dictionary of each name's first value, built on the first lookup.
    The same answers: names compared in lower case, the first of repeated headers, ``KeyError``
    for a missing one. The headers are immutable, so the dictionary never goes stale.
    """

    def _first(self) -> dict[str, str]:
        found: dict[str, str] | None = self.__dict__.get("_first_values")
        if found is None:
            found = {}
            for name, value in self.raw:
                found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
            self.__dict__["_first_values"] = found
        return found

    def __getitem__(self, key: str) -> str:
        """The first value of header ``key`` (any case).

        Raises:
            KeyError: no such header.
        """
        return self._first()[key.lower()]

    def __contains__(self, key: Any) -> bool:
        """Whether header ``key`` (a name, any case) was sent."""
        return isinstance(key, str) and key.lower() in self._first()

    def get(self, key: str, default: Any = None) -> Any:
        """The first value of header ``key`` (any case), or ``default``."""
        return self._first().get(key.lower(), default)


class LaneRequest(Request):
    """A hot route's request: its ``headers`` are a :class:`HeaderMap`."""

    @property
    def headers(self) -> Headers:
        """The request's headers (built once)."""
        found: Headers | None = self.__dict__.get("_lane_headers")
        if found is None:
            found = self.__dict__["_lane_headers"] = HeaderMap(scope=self.scope)
        return found


def _endpoint(
    route: Route, router: Router, status_handlers: Mapping[int, ErrorHandler], plain: ErrorHandler
) -> ASGIApp:
    """The route's endpoint as ASGI, with the scope keys the router would set and its HTTPException answers."""
    endpoint: Endpoint = route.endpoint

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("router", router)
        scope["route"], scope["endpoint"], scope["path_params"] = route, endpoint, {}
        request = LaneRequest(scope, receive, send)
        try:
            response = await endpoint(request)
        except HTTPException as exc:
            response = await status_handlers.get(exc.status_code, plain)(request, exc)
            exc.__traceback__ = None
        await response(scope, receive, send)

    return serve
