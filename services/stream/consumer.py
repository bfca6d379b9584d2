"""The node's one broker consumer: its own exclusive queue, whose messages feed the hub."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aiormq.exceptions import ChannelLockedResource
from pydantic import ValidationError

from services.core import broker
from services.core.broker import BROKER_ERRORS
from services.core.events import UNREAD, UnreadChanged
from services.core.metrics import DEAD_LETTERED
from services.core.tenancy import Student
from services.logs import request_id
from services.stream.batches import MalformedBatch, read_batch
from services.stream.hub import Hub

logger = logging.getLogger(__name__)

PREFETCH = 256
ACK_SECONDS = 0.01  # how long a handled message may wait to be acknowledged with others
LOCKED_RETRY_SECONDS = 1.0
LOCKED_RETRIES = 30


@dataclass
class NodeQueue:
    channel: AbstractRobustChannel
    exchange: AbstractExchange
    queue: AbstractRobustQueue


async def declare_node_queue(connection: AbstractRobustConnection, node_id: str) -> NodeQueue:
    """The queue is exclusive and named after the node, so it goes away with the node. A node
    restarted under the same id can find the old queue still held by a connection RabbitMQ
    has not yet seen die (RESOURCE_LOCKED): wait for it to go rather than fail."""
    name = broker.node_queue_name(node_id)
    for attempt in range(1, LOCKED_RETRIES + 1):
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        exchange = await broker.declare_topology(channel)
        try:
            queue = await channel.declare_queue(
                name,
                exclusive=True,
                arguments={"x-dead-letter-exchange": broker.DEAD_LETTER_EXCHANGE},
            )
        except ChannelLockedResource:
            logger.warning("queue %s is still held elsewhere (try %d)", name, attempt)
            with contextlib.suppress(Exception):
                await channel.close()
            await asyncio.sleep(LOCKED_RETRY_SECONDS)
            continue
        assert isinstance(channel, AbstractRobustChannel)
        assert isinstance(queue, AbstractRobustQueue)
        return NodeQueue(channel, exchange, queue)
    raise SystemExit(f"gradecast: queue {name} stays locked; is node {node_id} running twice?")


def settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Acknowledger:
    """Acknowledges handled messages together: the newest, with multiple=True, once
    ACK_SECONDS have passed since the first of them or a quarter of the prefetch window is
    handled, whichever comes first. An ack frame for each message took a fifth of a node's
    CPU under many small messages. A poison message's reject goes out at once, before any
    ack that covers its tag."""

    def __init__(self, window: int) -> None:
        self.enough = max(1, window // 4)
        self.newest: AbstractIncomingMessage | None = None
        self.handled = 0
        self.due: asyncio.Future[None] | None = None  # while an ack waits

    async def ack(self, message: AbstractIncomingMessage) -> None:
        self.newest = message
        self.handled += 1
        if self.due is None:
            await self.ack_soon()
        elif self.handled >= self.enough:
            settle(self.due)

    async def ack_soon(self) -> None:
        loop = asyncio.get_running_loop()
        self.due = due = loop.create_future()
        timer = loop.call_later(ACK_SECONDS, settle, due)
        try:
            await due
        finally:
            timer.cancel()
            newest, self.newest, self.handled, self.due = self.newest, None, 0, None
        if newest is None:
            return
        try:
            await newest.ack(multiple=True)
        except BROKER_ERRORS as error:  # its channel is gone, and its messages with it
            logger.warning("could not acknowledge messages: %r", error)


def message_handler(hub: Hub) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    acknowledger = Acknowledger(PREFETCH)

    async def handle(message: AbstractIncomingMessage) -> None:
        request_id.set(message.correlation_id)  # each message runs in a task of its own
        try:
            if message.type == UNREAD:
                change = UnreadChanged.model_validate_json(message.body)
                hub.unread_changed(Student(change.tenant_id, change.student_id), change.unread)
            else:
                hub.deliver(read_batch(message.type, message.body))
        except (ValidationError, MalformedBatch) as error:
            # Poison: to the dead-letter queue for operators, and go on.
            logger.error("dead-lettered message %s: %s", message.message_id, error)
            DEAD_LETTERED.inc()
            await message.reject(requeue=False)
            return
        await acknowledger.ack(message)

    return handle
