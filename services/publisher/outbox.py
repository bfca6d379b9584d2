"""Sends outbox rows to RabbitMQ with publisher confirms and deletes what was confirmed.

A publish sends its own rows right after its commit; the relay loop deletes the confirmed
ones, all together once a second, rather than in a transaction per request. What a publish
could not send (the broker was down, the process died) the relay loop sends later, from
what Postgres holds; rows are claimed with SKIP LOCKED so that several publishers never
send the same row at once. Should a row still go out twice (confirmed, but the process died
before deleting it), stream nodes drop what a connection has already had.
"""

import asyncio
import logging
from collections.abc import Sequence

import aiormq
from aio_pika.abc import AbstractChannel
from aiormq import spec
from sqlalchemy import ARRAY, BigInteger, any_, bindparam, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.broker import BROKER_ERRORS, EXCHANGE, BrokerLink
from services.core.db import DatabaseUnavailable, transaction
from services.core.events import GRADES
from services.core.metrics import OUTBOX_AGE, OUTBOX_BACKLOG
from services.core.models import OutboxMessage
from services.publisher.messages import BATCH_JSON, Outgoing, messages_of

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
STALE_SECONDS = 5.0  # rows younger than this are still being sent by their own request
BATCH_SIZE = 500

BACKLOG = select(
    func.count().label("rows"),
    func.extract("epoch", func.now() - func.min(OutboxMessage.created_at)).label("age"),
)
# An array parameter: one prepared statement whatever the number of ids.
DELETE_SENT = delete(OutboxMessage).where(
    OutboxMessage.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))
)
# Claims rows their own request did not send, with the notifications they name (none, if
# the retention worker has purged them since), so their messages can be built again.
CLAIM_STALE = text(f"""
    WITH claimed AS (
        SELECT id, routing_key, notification_ids FROM outbox
        WHERE created_at < now() - interval '{STALE_SECONDS} seconds'
        ORDER BY id
        LIMIT {BATCH_SIZE}
        FOR UPDATE SKIP LOCKED
    )
    SELECT claimed.id AS outbox_id, claimed.routing_key, {BATCH_JSON} AS body
    FROM claimed
    LEFT JOIN (notifications JOIN student_sequences USING (tenant_id, student_id)) AS n
        ON n.id = ANY(claimed.notification_ids)
    GROUP BY claimed.id, claimed.routing_key
    ORDER BY claimed.id
""")


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        link: BrokerLink,
        channel: AbstractChannel,
        timeout_seconds: float,
    ) -> None:
        self.engine = engine
        self.link = link
        self.channel = channel
        self.timeout_seconds = timeout_seconds
        self.confirmed: list[int] = []  # sent and confirmed, still to be deleted

    async def send_now(self, messages: Sequence[Outgoing]) -> bool:
        """After a commit: send; the relay loop deletes what was confirmed. A failure leaves
        the rows to the relay loop to send."""
        if not messages or not self.link.up:
            return False  # never wait on a broker that is down: the relay sends them later
        try:
            await self.publish(messages)
        except Exception as error:  # committed already: the answer is 201 whatever happens here
            logger.warning("outbox: left %d messages to the relay: %r", len(messages), error)
            return False
        self.confirmed.extend(message.id for message in messages)
        return True

    async def delete_confirmed(self) -> None:
        """One statement for every row confirmed since the last call; on failure they stay
        listed for the next."""
        ids, self.confirmed = self.confirmed, []
        if not ids:
            return
        try:
            async with transaction(self.engine, one_statement=True) as connection:
                await connection.execute(DELETE_SENT, {"ids": ids})
        except BaseException:
            self.confirmed.extend(ids)
            raise

    async def relay_stale(self) -> int:
        """Send one batch of rows that their own request did not send; how many were sent."""
        async with transaction(self.engine) as connection:
            rows = (await connection.execute(CLAIM_STALE)).all()
            if not rows:
                return 0
            await self.publish(messages_of(rows))
            ids = [row.outbox_id for row in rows]
            await connection.execute(DELETE_SENT, {"ids": ids})
        logger.info("outbox: relayed %d messages", len(ids))
        return len(ids)

    async def run(self) -> None:
        """The relay loop, until cancelled."""
        while True:
            try:
                await self.delete_confirmed()
                await self.measure_backlog()
                sent = await self.relay_stale()
            except (*BROKER_ERRORS, DatabaseUnavailable) as error:
                logger.warning("outbox: relay failed, will retry: %r", error)
                sent = 0
            except Exception:  # the loop must outlive any one failure
                logger.exception("outbox: relay failed, will retry")
                sent = 0
            if sent < BATCH_SIZE:
                await asyncio.sleep(POLL_SECONDS)

    async def measure_backlog(self) -> None:
        async with transaction(self.engine, one_statement=True) as connection:
            row = (await connection.execute(BACKLOG)).one()
        OUTBOX_BACKLOG.set(row.rows)
        OUTBOX_AGE.set(row.age or 0)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Returns once RabbitMQ has confirmed every message; raises otherwise.

        Through aiormq's channel with `wait=False`: aio-pika's publish waits, holding the
        channel's lock, until each frame is written, so a publish's messages went out one
        event-loop turn after another (aiormq#146), and under load its confirms took tens
        of milliseconds. The confirms still say that RabbitMQ has every message. Not
        mandatory: a shard no node serves has no one to deliver to, and nothing to return.
        """
        async with asyncio.timeout(self.timeout_seconds):
            channel = await self.channel.get_underlay_channel()
            assert isinstance(channel, aiormq.Channel)  # whose publish takes `wait`
            await asyncio.gather(
                *(
                    channel.basic_publish(
                        message.body,
                        exchange=EXCHANGE,
                        routing_key=message.routing_key,
                        properties=spec.Basic.Properties(
                            content_type="application/json",
                            delivery_mode=1,  # the node queues are not durable
                            message_id=str(message.id),
                            correlation_id=message.request_id,  # for the nodes' logs
                            message_type=GRADES,
                        ),
                        wait=False,
                    )
                    for message in messages
                )
            )
