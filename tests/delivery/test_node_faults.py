"""A stream node killed, stopped, or facing a reader that stopped reading."""

import asyncio
import contextlib
import os
import signal
import socket
import time

import httpx

from services.core.broker import node_queue_name
from services.launch import GRADECAST
from tests.conftest import Services
from tests.support import (
    MANAGEMENT_AUTH,
    MANAGEMENT_URL,
    ROOT,
    ServiceProcess,
    eventually,
    grade_body,
    open_stream,
    publish,
    token_for,
    unique,
)


def queue_exists(vhost: str, queue: str) -> bool:
    url = f"{MANAGEMENT_URL}/queues/{vhost}/{queue}"
    return httpx.get(url, auth=MANAGEMENT_AUTH, timeout=5).status_code == 200


async def test_clients_of_a_killed_node_resume_on_another_with_nothing_lost(
    client: httpx.AsyncClient,
    services: Services,
    publisher: ServiceProcess,
    node_b: ServiceProcess,
    amqp_vhost: str,
) -> None:
    node_id = unique("node")
    doomed = services.start("stream", "--node-id", node_id)
    assert queue_exists(amqp_vhost, node_queue_name(node_id))
    student = unique()
    token = token_for(student)
    async with open_stream(client, doomed.url, student, token) as stream:
        first = await publish(client, publisher.url, grade_body(student))
        last_id = (await stream.next_event()).id
        assert doomed.process is not None
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait(10)
    await eventually(lambda: not queue_exists(amqp_vhost, node_queue_name(node_id)))

    meanwhile = [await publish(client, publisher.url, grade_body(student)) for _ in range(3)]
    headers = {"Last-Event-ID": str(last_id)}
    async with open_stream(client, node_b.url, student, token, **headers) as resumed:
        received = [event.id for event in await resumed.events(3)]
        await resumed.assert_quiet(1.5)
    assert last_id == first["notifications"][0]["id"]
    assert received == [m["notifications"][0]["id"] for m in meanwhile]


async def test_sigterm_ends_streams_with_a_jittered_retry_and_exits_quickly(
    client: httpx.AsyncClient, services: Services, amqp_vhost: str
) -> None:
    node_id = unique("node")
    node = services.start("stream", "--node-id", node_id, RECONNECT_JITTER_MILLISECONDS="60000")
    students = [unique() for _ in range(10)]
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(open_stream(client, node.url, s, token_for(s)))
            for s in students
        ]
        await asyncio.gather(*(stream.assert_quiet(0.2) for stream in streams))
        assert {stream.retry for stream in streams} == {500}
        assert node.process is not None
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        for stream in streams:
            try:
                await stream.next_event(10)
            except EOFError:
                continue
            raise AssertionError("a stream got an event instead of ending")
        returncode = await asyncio.to_thread(node.process.wait, 15)
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert returncode == -signal.SIGTERM
    assert "Application shutdown complete" in node.log.read_text()
    assert time.monotonic() - started < 10
    retries = [stream.retry for stream in streams]
    assert all(r is not None and 500 <= r <= 60_500 for r in retries)
    assert len(set(retries)) > 1  # spread out, not all in the same instant
    assert not queue_exists(amqp_vhost, node_queue_name(node_id))


async def test_publisher_and_retention_exit_cleanly_on_sigterm(
    services: Services, service_env: dict[str, str]
) -> None:
    publisher = services.start("publisher")
    retention = await asyncio.create_subprocess_exec(
        *GRADECAST,
        "retention",
        env={**os.environ, **service_env},
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert retention.stderr is not None
    while b"retention: purged" not in await retention.stderr.readline():
        pass  # its first pass is done; now it waits for the next one
    assert publisher.process is not None
    publisher.process.send_signal(signal.SIGTERM)
    retention.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down cleanly; retention returns.
    assert await asyncio.to_thread(publisher.process.wait, 15) == -signal.SIGTERM
    assert "Application shutdown complete" in publisher.log.read_text()
    assert await asyncio.wait_for(retention.wait(), 15) == 0


async def test_a_reader_that_stops_reading_is_dropped_and_others_are_not_slowed(
    client: httpx.AsyncClient, services: Services, publisher: ServiceProcess
) -> None:
    node = services.start("stream", "--node-id", unique("node"), CONNECTION_BUFFER_EVENTS="20")
    slow, fast = unique(), unique()
    # A client with a tiny receive window that never reads.
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", node.port or 0))
    request = (
        f"GET /notifications/stream/{slow} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token_for(slow)}\r\n\r\n"
    )
    reader.sendall(request.encode())

    async def open_streams() -> dict[str, int]:
        counts: dict[str, int] = (await client.get(f"{node.url}/connections")).json()["students"]
        return counts

    async def slow_one_open() -> bool:
        return (await open_streams()).get(slow) == 1

    await eventually(slow_one_open)
    comment = "x" * 2000
    async with open_stream(client, node.url, fast, token_for(fast)) as stream:
        dropped = False
        for _ in range(60):
            batch = [
                publish(client, publisher.url, grade_body(slow, teacherComment=comment))
                for _ in range(40)
            ]
            await asyncio.gather(*batch)
            if slow not in await open_streams():
                dropped = True
                break
        assert dropped, "the reader that stopped reading is still held"
        result = await publish(client, publisher.url, grade_body(fast))
        assert (await stream.next_event(5)).id == result["notifications"][0]["id"]
    reader.close()
