"""Routes served past FastAPI's router: the same answers, errors, request ids and metrics
as any other route, and the router's own answers for what they do not take."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY

from services.core.db import DatabaseUnavailable
from services.web.app import service_app
from services.web.direct import resolved_by
from services.web.errors import Forbidden

router = APIRouter()
seen: list[str] = []
wrapped: list[bool] = []  # whether FastAPI's request wrapper ran, as the router's would


async def open_echo(request: Request) -> Response:
    """echo's resolver: what it raises says which handler should answer."""
    word = request.path_params["word"]
    wrapped.append("fastapi_inner_astack" in request.scope)
    if word == "forbidden":
        raise Forbidden("not this word")
    if word == "down":
        raise DatabaseUnavailable("gone")
    if word == "bug":
        raise RuntimeError("a bug")
    return await echo(word)


async def echo(word: str) -> Response:
    """Says the word back."""
    seen.append(word)
    return JSONResponse({"word": word})


router.add_api_route(
    "/echo/{word}", echo, methods=["GET"], route_class_override=resolved_by(open_echo)
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


async def ready(request: Request) -> dict[str, bool]:
    return {}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = service_app("direct", lifespan, router, ready)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def requests(status: str) -> float:
    labels = {"method": "GET", "route": "/echo/{word}", "status": status}
    return REGISTRY.get_sample_value("gradecast_http_requests_total", labels) or 0.0


async def test_a_direct_route_answers_through_the_apps_middleware(
    client: httpx.AsyncClient,
) -> None:
    before = requests("200")
    answer = await client.get("/echo/hello", headers={"X-Request-ID": "direct-1"})
    assert (answer.status_code, answer.json()) == (200, {"word": "hello"})
    assert seen[-1] == "hello" and wrapped[-1] is False
    assert answer.headers["X-Request-ID"] == "direct-1"
    assert requests("200") == before + 1  # counted under its template, not its path


@pytest.mark.parametrize(
    ("word", "status", "code"),
    [("forbidden", 403, "forbidden"), ("down", 503, "unavailable"), ("bug", 500, "internal_error")],
)
async def test_what_a_resolver_raises_gets_the_apps_error_shape(
    client: httpx.AsyncClient, word: str, status: int, code: str
) -> None:
    answer = await client.get(f"/echo/{word}")
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    if status != 500:  # the server error middleware answers outside the request id's
        assert "X-Request-ID" in answer.headers


async def test_what_a_direct_route_does_not_take_goes_to_the_router(
    client: httpx.AsyncClient,
) -> None:
    wrong_method = await client.post("/echo/hello")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert (await client.get("/echo/hello/more")).status_code == 404
    assert (await client.get("/health")).json() == {"status": "ok"}
