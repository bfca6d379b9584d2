"""Routes that resolve their own parameters: for the hottest paths, FastAPI's dependency
solving and request wrapper cost more than the work they lead to (bench/RESULTS.md). Such a
route's endpoint signature still documents it in OpenAPI; its resolver calls the functions
that are the endpoint's dependencies, in the same order, checks its parameters as FastAPI's
Path, Header and Query would, and calls the endpoint."""

import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from services.web.errors import InvalidRequest

Resolver = Callable[[Request], Coroutine[Any, Any, Response]]


def resolved_by(resolver: Resolver) -> type[APIRoute]:
    """The route class to register the endpoint with (route_class_override)."""

    class ResolvedRoute(APIRoute):
        def get_route_handler(self) -> Resolver:
            return resolver

    return ResolvedRoute


def check(name: str, value: str | None, pattern: str, max_length: int) -> None:
    """What FastAPI's Path, Header and Query checks would refuse, with a 422 naming it."""
    if value is not None and (len(value) > max_length or not re.fullmatch(pattern, value)):
        raise InvalidRequest(f"{name}: should match the pattern '{pattern}'")
