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
from services.core.events import UNREAD, NotificationBatch, UnreadChanged
from services.core.metrics import DEAD_LETTERED
from services.core.tenancy import Student
from services.logs import request_id
from services.stream.hub import Hub

logger = logging.getLogger(__name__)

PREFETCH = 256
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


def message_handler(hub: Hub) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def handle(message: AbstractIncomingMessage) -> None:
        request_id.set(message.correlation_id)  # each message runs in a task of its own
        try:
            if message.type == UNREAD:
                change = UnreadChanged.model_validate_json(message.body)
                hub.unread_changed(Student(change.tenant_id, change.student_id), change.unread)
            else:
                batch = NotificationBatch.model_validate_json(message.body)
                for notification in batch.notifications:
                    unread = batch.unread.get(notification.student_id)
                    hub.dispatch(batch.tenant_id, notification, unread)
        except ValidationError as error:
            # Poison: to the dead-letter queue for operators, and go on.
            logger.error("dead-lettered message %s: %s", message.message_id, error)
            DEAD_LETTERED.inc()
            await message.reject(requeue=False)
            return
        await message.ack()

    return handle
