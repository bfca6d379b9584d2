"""Routes that resolve their own parameters and are served without FastAPI's router: for
the hottest paths (opening a stream, publishing), FastAPI's dependency solving, router and
per-request wrappers cost more than the work they lead to (bench/RESULTS.md). Such a
route's endpoint signature still documents it in OpenAPI; its resolver calls the functions
that are the endpoint's dependencies, in the same order, checks its parameters as FastAPI's
Path, Header and Query would, and calls the endpoint."""

import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from services.web.errors import HANDLERS, Handler, InvalidRequest

Resolver = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    resolver: Resolver

    def get_route_handler(self) -> Resolver:
        return self.resolver


def resolved_by(resolver: Resolver) -> type[APIRoute]:
    """The route class to register the endpoint with (route_class_override)."""
    return type("ResolvedRoute", (DirectRoute,), {"resolver": staticmethod(resolver)})


class DirectRoutes:
    """The innermost of the app's own middleware: a request for a DirectRoute goes straight
    to its resolver, past FastAPI's router, exception middleware and request wrapper, while
    the middleware outside (server errors, CORS, metrics, request ids) sees it as any other.
    What the resolver raises gets the app's own exception handlers; anything else goes on
    to the router (a wrong method, say, for its 405)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = [route for route in routes if isinstance(route, DirectRoute)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await self.serve(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def serve(self, route: DirectRoute, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await route.resolver(request)
        except Exception as error:
            handler = handler_of(error)
            if handler is None:
                raise  # to the server error middleware, which logs it and answers 500
            response = await handler(request, error)
        await response(scope, receive, send)


def handler_of(error: Exception) -> Handler | None:
    """The app's handler for `error`, as its exception middleware would find it."""
    for cls in type(error).__mro__:
        if cls is Exception:
            return None  # the server error middleware's
        if cls in HANDLERS:
            return HANDLERS[cls]
    return None


def check(name: str, value: str | None, pattern: str, max_length: int) -> None:
    """What FastAPI's Path, Header and Query checks would refuse, with a 422 naming it."""
    if value is not None and (len(value) > max_length or not re.fullmatch(pattern, value)):
        raise InvalidRequest(f"{name}: should match the pattern '{pattern}'")
