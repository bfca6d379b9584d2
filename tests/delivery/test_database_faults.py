"""Postgres unreachable, for the publisher and for stream nodes."""

import time

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Services
from tests.proxy import TcpProxy
from tests.support import (
    PUBLISHER_KEYS,
    eventually,
    grade_body,
    is_not_ready,
    is_ready,
    open_stream,
    publish,
    row_counts,
    token_for,
    unique,
)

KEY = {"Authorization": f"Bearer {PUBLISHER_KEYS[0]}"}


async def test_publish_answers_503_fast_while_postgres_is_down_and_recovers_by_itself(
    client: httpx.AsyncClient,
    services: Services,
    postgres_proxy: TcpProxy,
    service_env: dict[str, str],
    db: AsyncEngine,
) -> None:
    database_url = postgres_proxy.replace_port(service_env["DATABASE_URL"])
    publisher = services.start("publisher", DATABASE_URL=database_url)
    student = unique()
    await publish(client, publisher.url, grade_body(student))

    postgres_proxy.cut()
    before = await row_counts(db)
    for _ in range(3):
        started = time.monotonic()
        url = f"{publisher.url}/grades/publish"
        response = await client.post(url, json=grade_body(student), headers=KEY)
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) > 0
        assert elapsed < 5, elapsed  # the connect timeout is 1.5 s
    assert await row_counts(db) == before

    postgres_proxy.restore()  # no restart: the pool tests its connections
    result = await publish(client, publisher.url, grade_body(student))
    assert result["notifications"][0]["id"] == "2"


async def test_streams_stay_open_without_postgres_and_replays_return_with_it(
    client: httpx.AsyncClient,
    services: Services,
    postgres_proxy: TcpProxy,
    service_env: dict[str, str],
) -> None:
    database_url = postgres_proxy.replace_port(service_env["DATABASE_URL"])
    node = services.start("stream", "--node-id", unique("node"), DATABASE_URL=database_url)
    publisher = services.start("publisher")  # reaches Postgres directly
    student = unique()
    token = token_for(student)
    async with open_stream(client, node.url, student, token) as live:
        postgres_proxy.cut()
        await eventually(lambda: is_not_ready(node))
        # The live path needs no database: a grade still arrives.
        result = await publish(client, publisher.url, grade_body(student))
        assert (await live.next_event()).id == result["notifications"][0]["id"]

        # A reconnect needs Postgres for its replay: it is told to come back later.
        headers = {"Last-Event-ID": "0"}
        async with open_stream(client, node.url, student, token, **headers) as refused:
            with pytest.raises(EOFError):  # ends at once, with no event
                await refused.next_event()
            assert refused.retry is not None and refused.retry >= 500
        await live.assert_quiet(2.5)
        assert live.comments.count("keepalive") >= 2  # open and alive throughout

        postgres_proxy.restore()
        await eventually(lambda: is_ready(node), seconds=20)
        async with open_stream(client, node.url, student, token, **headers) as replay:
            assert [e.id for e in await replay.events(1)] == ["1"]
        after = await publish(client, publisher.url, grade_body(student))
        assert (await live.next_event()).id == after["notifications"][0]["id"] == "2"


async def test_a_node_started_without_postgres_serves_streams_once_it_is_back(
    client: httpx.AsyncClient,
    services: Services,
    postgres_proxy: TcpProxy,
    service_env: dict[str, str],
) -> None:
    postgres_proxy.cut()
    database_url = postgres_proxy.replace_port(service_env["DATABASE_URL"])
    node = services.start(
        "stream", "--node-id", unique("node"), wait_ready=False, DATABASE_URL=database_url
    )

    async def answers_not_ready() -> bool:  # up, with its pool left for later
        try:
            return (await client.get(f"{node.url}/ready")).status_code == 503
        except httpx.TransportError:  # not listening yet
            return False

    await eventually(answers_not_ready, seconds=20)
    assert "database unavailable at start" in node.log.read_text()

    postgres_proxy.restore()
    await eventually(lambda: is_ready(node), seconds=20)
    publisher = services.start("publisher")
    student = unique()
    async with open_stream(client, node.url, student, token_for(student)) as live:
        result = await publish(client, publisher.url, grade_body(student))
        assert (await live.next_event()).id == result["notifications"][0]["id"]
