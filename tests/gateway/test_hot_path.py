"""GatewayApp: hot routes skip the router but keep every middleware's effect and the app's error answers."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from comptroller.gateway.hot_path import GatewayApp


class Marking:
    """A middleware that records each request's path and adds a response header."""

    seen: list[str]

    def __init__(self, app: ASGIApp, name: str, seen: list[str]) -> None:
        self.app, self.name, self.seen = app, name, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.seen.append(f"{self.name} {scope['path']}")

        async def marked(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-mark", self.name.encode())]}
            await send(message)

        await self.app(scope, receive, marked)


async def _echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"app": request.app is not None, "route": request.scope["route"].path,
                         "path_params": request.path_params, "bytes": len(body)})


async def _teapot(request: Request) -> Response:
    raise HTTPException(418, "short and stout")


async def _gone(request: Request) -> Response:
    raise HTTPException(404, "no such thing")


async def _broken(request: Request) -> Response:
    raise RuntimeError("boom")


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("handled not found", status_code=404)


def _app(seen: list[str]) -> GatewayApp:
    hot = [Route(path, endpoint, methods=["POST"]) for path, endpoint in
           (("/v1/echo", _echo), ("/v1/teapot", _teapot), ("/v1/gone", _gone), ("/v1/broken", _broken))]
    return GatewayApp(hot=hot, routes=hot, exception_handlers={404: _not_found, 405: _not_found},
                      middleware=[Middleware(Marking, name="outer", seen=seen),
                                  Middleware(Marking, name="inner", seen=seen)])


def test_a_hot_route_runs_every_middleware_in_order_and_sets_the_router_keys() -> None:
    seen: list[str] = []
    with TestClient(_app(seen)) as client:
        response = client.post("/v1/echo", content=b"12345")
    assert response.status_code == 200
    assert response.json() == {"app": True, "route": "/v1/echo", "path_params": {}, "bytes": 5}
    assert seen == ["outer /v1/echo", "inner /v1/echo"]
    assert response.headers.get_list("x-mark") == ["inner", "outer"]


def test_an_http_exception_is_answered_as_the_exception_middleware_would() -> None:
    with TestClient(_app([])) as client:
        teapot = client.post("/v1/teapot")
        gone = client.post("/v1/gone")
    assert (teapot.status_code, teapot.text) == (418, "short and stout")
    assert (gone.status_code, gone.text) == (404, "handled not found")


def test_an_unhandled_error_answers_500_and_is_raised_for_the_server() -> None:
    with TestClient(_app([]), raise_server_exceptions=False) as client:
        response = client.post("/v1/broken")
    assert (response.status_code, response.text) == (500, "Internal Server Error")
    with TestClient(_app([])) as client, pytest.raises(RuntimeError, match="boom"):
        client.post("/v1/broken")


def test_other_methods_and_paths_go_through_the_router() -> None:
    seen: list[str] = []
    with TestClient(_app(seen)) as client:
        wrong_method = client.get("/v1/echo")
        unknown = client.post("/v1/elsewhere")
    assert (wrong_method.status_code, wrong_method.text) == (404, "handled not found")  # the 405 handler
    assert (unknown.status_code, unknown.text) == (404, "handled not found")
    assert seen == ["outer /v1/echo", "inner /v1/echo", "outer /v1/elsewhere", "inner /v1/elsewhere"]


def test_a_root_path_goes_through_the_router() -> None:
    with TestClient(_app([]), root_path="/gw") as client:
        response = client.post("/gw/v1/echo", content=b"ab")
    assert response.status_code == 200
    assert response.json()["bytes"] == 2


def test_only_fixed_post_routes_can_be_hot() -> None:
    with pytest.raises(ValueError, match="hot route"):
        GatewayApp(hot=[Route("/v1/things/{id}", _echo, methods=["POST"])])
    with pytest.raises(ValueError, match="hot route"):
        GatewayApp(hot=[Route("/v1/things", _echo, methods=["GET"])])
