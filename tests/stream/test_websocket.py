"""The WebSocket endpoint: the same events, replay and refusals as the SSE stream."""

import asyncio
import signal
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import Services
from tests.support import ServiceProcess, eventually, grade_body, publish, token_for, unique


def ws_url(node: ServiceProcess, student: str, query: str) -> str:
    return f"ws://127.0.0.1:{node.port}/notifications/ws/{student}?{query}"


async def receive(socket: Any, event: str = "grade") -> dict[str, Any]:
    """The next message of that kind (stats messages come along the way)."""
    while True:
        message: dict[str, Any] = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
        if message["event"] == event:
            return message


async def test_a_grade_arrives_and_a_reconnect_replays_what_was_missed(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    student = unique()
    token = token_for(student)
    async with websockets.connect(ws_url(node_a, student, f"token={token}")) as socket:
        assert (await receive(socket, "stats"))["data"] == {"unread": 0}
        body = grade_body(student, teacherComment="a\\nb")
        result = await publish(client, publisher.url, body)
        grade = await receive(socket)
        assert grade["id"] == result["notifications"][0]["id"] == "1"
        assert grade["data"]["assignmentId"] == body["assignmentId"]
        assert (await receive(socket, "stats"))["data"] == {"unread": 1}

    missed = [await publish(client, publisher.url, grade_body(student)) for _ in range(2)]
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(
        ws_url(node_a, student, "lastEventId=1"), additional_headers=headers
    ) as socket:
        replayed = [(await receive(socket))["id"] for _ in range(2)]
    assert replayed == [m["notifications"][0]["id"] for m in missed]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", 4401),
        ("token=not-a-token", 4401),
        ("token={other}", 4403),
        ("token={own}&lastEventId=abc", 4422),
    ],
)
async def test_refusals_close_with_the_http_status_in_the_code(
    node_a: ServiceProcess, query: str, code: int
) -> None:
    student = unique()
    query = query.format(own=token_for(student), other=token_for(unique()))
    async with websockets.connect(ws_url(node_a, student, query)) as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code


async def test_a_closed_websocket_leaves_nothing_behind(
    client: httpx.AsyncClient, node_a: ServiceProcess
) -> None:
    student = unique()

    async def streams_open() -> int:
        response = await client.get(f"{node_a.url}/connections")
        count: int = response.json()["students"].get(student, 0)
        return count

    async with websockets.connect(ws_url(node_a, student, f"token={token_for(student)}")) as ws:
        await receive(ws, "stats")
        assert await streams_open() == 1

    async def all_closed() -> bool:
        return await streams_open() == 0

    await eventually(all_closed)


async def test_a_stopping_node_closes_its_websockets_with_service_restart(
    services: Services,
) -> None:
    node = services.start("stream", "--node-id", unique("node"))
    student = unique()
    async with websockets.connect(ws_url(node, student, f"token={token_for(student)}")) as ws:
        await receive(ws, "stats")
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
