"""The seam between replay and live, under concurrent publishes and reconnects."""

import asyncio

import httpx

from tests.support import (
    ServiceProcess,
    grade_body,
    open_stream,
    publish,
    token_for,
    unique,
)

ROUNDS, CONCURRENCY = 40, 8
PUBLISHES = ROUNDS * CONCURRENCY


async def test_reconnecting_again_and_again_receives_exactly_what_was_published(
    client: httpx.AsyncClient,
    publisher: ServiceProcess,
    node_a: ServiceProcess,
    node_b: ServiceProcess,
) -> None:
    student = unique()
    token = token_for(student)
    published: list[str] = []

    async def publisher_loop() -> None:
        async def one() -> None:
            result = await publish(client, publisher.url, grade_body(student))
            published.append(result["notifications"][0]["id"])

        for _ in range(ROUNDS):
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))

    received: list[str] = []
    connections = 0
    publishing = asyncio.create_task(publisher_loop())
    while not publishing.done() or len(received) < len(published):
        node = (node_a, node_b)[connections % 2]  # alternate nodes too
        headers = {"Last-Event-ID": received[-1]} if received else {"Last-Event-ID": "0"}
        async with open_stream(client, node.url, student, token, **headers) as stream:
            connections += 1
            this_connection: list[str] = []
            for _ in range(15):  # then drop the connection and come back
                try:
                    event = await stream.next_event(seconds=3)
                except TimeoutError:
                    break
                this_connection.append(event.id or "")
            assert len(this_connection) == len(set(this_connection)), "duplicate on a connection"
            assert [int(i) for i in this_connection] == sorted(int(i) for i in this_connection)
            received += this_connection
    await publishing
    assert connections > 5
    assert len(published) == PUBLISHES
    assert received == sorted(published, key=int)  # every grade once, in order
