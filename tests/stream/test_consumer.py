"""What a stream node does with what arrives on its queue."""

import asyncio
from collections.abc import Awaitable
from typing import cast

import aio_pika
import httpx
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage

from services.core.broker import DEAD_LETTER_QUEUE, EXCHANGE, routing_key, shard_of
from services.core.events import GRADES
from services.core.tenancy import Student
from services.stream import consumer
from services.stream.consumer import Acknowledger
from tests.conftest import Services
from tests.support import (
    ServiceProcess,
    eventually,
    grade_body,
    open_stream,
    publish,
    token_for,
    unique,
)


async def test_a_poison_message_is_dead_lettered_and_the_node_goes_on(
    client: httpx.AsyncClient,
    publisher: ServiceProcess,
    node_a: ServiceProcess,
    service_env: dict[str, str],
) -> None:
    student = unique()
    connection = await aio_pika.connect(service_env["AMQP_URL"])
    async with connection, open_stream(client, node_a.url, student, token_for(student)) as stream:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        poison = aio_pika.Message(b'{"studentIds": ["not a grade"]}', message_id="p1", type=GRADES)
        await exchange.publish(
            poison, routing_key=routing_key(shard_of(Student("default", student), 64))
        )

        dead_letters = await channel.get_queue(DEAD_LETTER_QUEUE)
        message = None
        for _ in range(50):
            message = await dead_letters.get(fail=False, timeout=5)
            if message is not None:
                break
            await stream.assert_quiet(0.1)
        assert message is not None and message.message_id == "p1"
        await message.ack()

        result = await publish(client, publisher.url, grade_body(student))
        assert (await stream.next_event()).id == result["notifications"][0]["id"]


async def test_a_nodes_log_lines_carry_the_publish_requests_id(
    client: httpx.AsyncClient, services: Services, service_env: dict[str, str]
) -> None:
    node = services.start("stream", "--node-id", unique("node"), LOG_FORMAT="json")
    student = unique()
    connection = await aio_pika.connect(service_env["AMQP_URL"])
    async with connection, open_stream(client, node.url, student, token_for(student)):
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        poison = aio_pika.Message(b"{}", correlation_id="trace-42")
        await exchange.publish(
            poison, routing_key=routing_key(shard_of(Student("default", student), 64))
        )

        def logged() -> list[dict[str, object]]:
            lines = []
            for line in node.log.read_text().splitlines():
                try:
                    lines.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    pass  # the last line, half written
            return [line for line in lines if line.get("request_id") == "trace-42"]

        await eventually(lambda: logged())
    assert "dead-lettered" in str(logged()[0]["message"])


class Delivered:
    """A message as the acknowledger sees it: what it was acknowledged with."""

    def __init__(self, tag: int, acks: list[tuple[int, bool]]) -> None:
        self.tag, self.acks = tag, acks

    async def ack(self, multiple: bool = False) -> None:
        self.acks.append((self.tag, multiple))


async def test_messages_are_acknowledged_together(monkeypatch: pytest.MonkeyPatch) -> None:
    acks: list[tuple[int, bool]] = []
    acknowledger = Acknowledger(window=16)

    def handled(tag: int) -> Awaitable[None]:
        return acknowledger.ack(cast(AbstractIncomingMessage, Delivered(tag, acks)))

    await asyncio.gather(*(handled(tag) for tag in (1, 2, 3)))  # within ACK_SECONDS
    assert acks == [(3, True)]
    # A quarter of the window handled is acknowledged at once, whatever the time.
    monkeypatch.setattr(consumer, "ACK_SECONDS", 3600)
    await asyncio.wait_for(asyncio.gather(*(handled(tag) for tag in range(4, 8))), 5)
    assert acks == [(3, True), (7, True)]
