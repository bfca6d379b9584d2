"""The RabbitMQ topology every process declares, and how student ids map to routing keys.

Grades go to one direct exchange with the routing key of the student's shard. Each stream
node binds the shards of the students it serves to its own exclusive queue, so the number
of bindings stays at most BROKER_SHARDS however many students come and go.
"""

import asyncio
import logging
import zlib
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from services.core.metrics import BROKER_RECONNECTS
from services.core.settings import Settings
from services.core.tenancy import Student

EXCHANGE = "gradecast.grades"
DEAD_LETTER_EXCHANGE = "gradecast.dead-letter"
DEAD_LETTER_QUEUE = "gradecast.dead-letter"
RECONNECT_SECONDS = 1.0
# What talking to RabbitMQ raises when it is down or the channel is gone.
BROKER_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError)

logger = logging.getLogger(__name__)


def shard_of(student: Student, shards: int) -> int:
    """Stable across processes and restarts, unlike hash()."""
    return zlib.crc32(f"{student.tenant_id}/{student.student_id}".encode()) % shards


def routing_key(shard: int) -> str:
    return f"shard.{shard}"


def node_queue_name(node_id: str) -> str:
    return f"gradecast.stream.{node_id}"


async def connect(settings: Settings, name: str) -> AbstractRobustConnection:
    """A connection that reconnects by itself, named for the management UI."""
    return await aio_pika.connect_robust(
        settings.AMQP_URL,
        timeout=settings.BROKER_TIMEOUT_SECONDS,
        reconnect_interval=RECONNECT_SECONDS,
        client_properties={"connection_name": name},
    )


class BrokerLink:
    """Whether a robust connection is up at this moment (its is_closed stays False while it
    reconnects), and a hook for what must happen once it is restored."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self.connection = connection
        self.up = True
        self.closing = False
        self.on_restored: list[Any] = []
        connection.close_callbacks.add(self.lost)
        connection.reconnect_callbacks.add(self.restored)

    def lost(self, *_: object) -> None:
        if self.up and not self.closing:
            logger.warning("lost the connection to RabbitMQ; reconnecting")
        self.up = False

    async def close(self, timeout_seconds: float) -> None:
        """Closes without waiting on a broker that is unreachable: shutdown must not hang."""
        self.closing = True
        try:
            async with asyncio.timeout(timeout_seconds):
                await self.connection.close()
        except BROKER_ERRORS as error:
            logger.warning("closed the RabbitMQ connection uncleanly: %r", error)

    def restored(self, *_: object) -> None:
        """Called once the channels, queues, bindings and consumers are restored."""
        self.up = True
        BROKER_RECONNECTS.inc()
        logger.info("reconnected to RabbitMQ")
        for callback in self.on_restored:
            callback()


async def declare_topology(channel: AbstractChannel) -> AbstractExchange:
    """Idempotent: every process calls it, whichever starts first."""
    dead_letters = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True)
    await queue.bind(dead_letters)
    return await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
