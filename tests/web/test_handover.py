"""uvicorn handing a started response's connection over to the app, over a real socket."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from services.web.handover import HandoverProtocol, hand_over
from tests.support import eventually, free_port


class Taken(asyncio.Protocol):
    """What the app hands the connection to."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


class App:
    """Starts a chunked response, then takes the connection."""

    def __init__(self) -> None:
        self.taken: list[tuple[Taken, asyncio.Transport | None]] = []
        self.returned = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        protocol = Taken()
        self.taken.append((protocol, hand_over(scope, protocol)))
        self.returned.set()


@pytest.fixture
async def server() -> AsyncIterator[tuple[uvicorn.Server, App, int]]:
    app, port = App(), free_port()
    config = uvicorn.Config(app, port=port, http=HandoverProtocol, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, seconds=10, interval=0.01)
    yield server, app, port
    server.should_exit = True
    await serving


async def test_the_app_writes_to_and_hears_the_end_of_a_handed_over_connection(
    server: tuple[uvicorn.Server, App, int],
) -> None:
    uvicorn_server, app, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
    assert await asyncio.wait_for(reader.readexactly(10), 5) == b"5\r\nhello\r\n"
    await asyncio.wait_for(app.returned.wait(), 5)

    ((protocol, transport),) = app.taken
    assert transport is not None
    assert not uvicorn_server.server_state.connections  # uvicorn let it go
    transport.write(b"6\r\n world\r\n")
    assert await asyncio.wait_for(reader.readexactly(11), 5) == b"6\r\n world\r\n"
    writer.write(b"anything")
    writer.close()
    await asyncio.wait_for(protocol.lost.wait(), 5)
    assert protocol.received == b"anything"


async def test_only_gradecasts_server_can_hand_over() -> None:
    with pytest.raises(RuntimeError, match="gradecast's server"):
        hand_over({"type": "http", "extensions": {}}, Taken())
