"""RabbitMQ unreachable: from a publisher, and from a stream node."""

import asyncio
import signal
import time

import httpx

from tests.conftest import Services
from tests.proxy import TcpProxy
from tests.support import (
    ServiceProcess,
    eventually,
    grade_body,
    is_not_ready,
    is_ready,
    open_stream,
    publish,
    token_for,
    unique,
)


async def test_grades_published_while_the_broker_is_unreachable_arrive_once_it_is_back(
    client: httpx.AsyncClient,
    services: Services,
    rabbitmq_proxy: TcpProxy,
    node_a: ServiceProcess,
    service_env: dict[str, str],
) -> None:
    """Two publishers: one cut off from RabbitMQ, one not. The cut-off one still answers
    201 at once; the grades reach the student from the outbox, each once and in order."""
    amqp_url = rabbitmq_proxy.replace_port(service_env["AMQP_URL"])
    cut_off = services.start("publisher", AMQP_URL=amqp_url)
    services.start("publisher")  # its relay loop competes for the same outbox rows
    student = unique()
    async with open_stream(client, node_a.url, student, token_for(student)) as stream:
        rabbitmq_proxy.cut()
        await eventually(lambda: is_not_ready(cut_off))

        started = time.monotonic()
        results = [await publish(client, cut_off.url, grade_body(student)) for _ in range(5)]
        assert time.monotonic() - started < 10  # 201s without waiting on the broker
        ids = [r["notifications"][0]["id"] for r in results]

        received = [event.id for event in await stream.events(5, seconds=30)]
        rabbitmq_proxy.restore()
        await eventually(lambda: is_ready(cut_off), seconds=20)
        after = await publish(client, cut_off.url, grade_body(student))
        received.append((await stream.next_event(seconds=15)).id)
        await stream.assert_quiet(2)
    assert received == [*ids, after["notifications"][0]["id"]]


async def test_a_node_that_loses_the_broker_fills_the_gap_from_postgres(
    client: httpx.AsyncClient,
    services: Services,
    rabbitmq_proxy: TcpProxy,
    publisher: ServiceProcess,
    service_env: dict[str, str],
) -> None:
    node = services.start(
        "stream",
        "--node-id",
        unique("node"),
        AMQP_URL=rabbitmq_proxy.replace_port(service_env["AMQP_URL"]),
    )
    student = unique()
    async with open_stream(client, node.url, student, token_for(student)) as stream:
        first = await publish(client, publisher.url, grade_body(student))
        received = [(await stream.next_event()).id]

        rabbitmq_proxy.cut()
        await eventually(lambda: is_not_ready(node))  # its consumer is gone: not ready
        missed = [await publish(client, publisher.url, grade_body(student)) for _ in range(3)]
        rabbitmq_proxy.restore()
        await eventually(lambda: is_ready(node), seconds=20)

        received += [event.id for event in await stream.events(3, seconds=20)]
        live = await publish(client, publisher.url, grade_body(student))  # bindings restored
        received.append((await stream.next_event()).id)
        await stream.assert_quiet(1.5)
    expected = [first, *missed, live]
    assert received == [r["notifications"][0]["id"] for r in expected]

    # Stopping it while the broker is unreachable does not hang on the broker.
    rabbitmq_proxy.cut()
    await eventually(lambda: is_not_ready(node))
    assert node.process is not None
    node.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(node.process.wait, 10) == -signal.SIGTERM
