"""Publishes stored together: those that arrive while Postgres is busy with earlier ones
wait and go in one statement, one commit and one gather of broker confirms (a group
commit). A statement, its round trip and its commit cost the publisher and Postgres as much
for one student as for several, and at 1,000 single-student publishes a second the
publisher's CPU was what limited the publishes answered (bench/RESULTS.md, ninth round).

A publish alone goes at once: the batches grow with the load, not with a timer. A
publish's answer waits for its own batch's commit and confirms, as it would alone; a
failing batch takes no publish down with it that would have succeeded alone.
"""

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.db import DatabaseUnavailable
from services.core.metrics import PUBLISH_BATCH, PUBLISH_WAITING
from services.publisher.idempotency import IdempotentRequest
from services.publisher.outbox import OutboxRelay
from services.publisher.schemas import MAX_RECIPIENTS
from services.publisher.store import Publication, Stored, store_idempotent, store_together

logger = logging.getLogger(__name__)

# Statements in flight at once. With one, a broadcast to 10,000 students (half a second)
# would hold up every publish behind it; with four, single-student publishes at 1,000 a
# second went in smaller batches, cost more CPU, and waited longer (bench/RESULTS.md).
IN_FLIGHT = 2


@dataclass
class Waiting:
    publication: Publication
    students: set[tuple[str, str]]
    stored: asyncio.Future[Stored] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit:
    def __init__(
        self, engine: AsyncEngine, relay: OutboxRelay, *, shards: int, retention_seconds: float
    ) -> None:
        self.engine = engine
        self.relay = relay
        self.shards = shards
        self.retention_seconds = retention_seconds
        self.waiting: list[Waiting] = []
        self.batches: set[asyncio.Task[None]] = set()

    async def publish(
        self, publication: Publication, idempotency: IdempotentRequest | None = None
    ) -> Stored:
        """Stores a publish, then sends its messages; a broker that fails them leaves them
        to the relay loop."""
        if idempotency is not None:  # its own transaction: it reads before it writes
            stored = await store_idempotent(
                self.engine,
                publication,
                idempotency,
                shards=self.shards,
                retention_seconds=self.retention_seconds,
            )
            await self.relay.send_now(stored.outgoing)
            return stored
        tenant = publication.publisher.tenant_id
        waiting = Waiting(publication, {(tenant, student) for student in publication.recipients})
        self.waiting.append(waiting)
        PUBLISH_WAITING.set(len(self.waiting))
        self.start_batches()
        return await waiting.stored

    def start_batches(self) -> None:
        while len(self.batches) < IN_FLIGHT and (batch := self.next_batch()):
            # Out of any request's context: its request id would be on the batch's logs.
            task = asyncio.create_task(self.run(batch), context=contextvars.Context())
            self.batches.add(task)

    def next_batch(self) -> list[Waiting]:
        """The waiting publishes in order of arrival, up to MAX_RECIPIENTS students and each
        student once (a statement updates a sequence row once): a publish to a student
        already taken, or held back, waits for a later batch, so that a student's grades
        keep their order. A publish whose request was cancelled meanwhile is dropped."""
        taken: list[Waiting] = []
        held: list[Waiting] = []
        students: set[tuple[str, str]] = set()
        count = 0
        for waiting in self.waiting:
            if waiting.stored.done():
                continue
            fits = count + len(waiting.students) <= MAX_RECIPIENTS
            if (not taken or fits) and students.isdisjoint(waiting.students):
                taken.append(waiting)
                count += len(waiting.students)
            else:
                held.append(waiting)
            students |= waiting.students
        self.waiting = held
        PUBLISH_WAITING.set(len(held))
        return taken

    async def run(self, batch: list[Waiting]) -> None:
        try:
            results = await self.store(batch)
        except BaseException as error:  # cancelled: no request waits forever
            fail(batch, error)
            raise
        finally:
            self.batches.discard(asyncio.current_task())
            self.start_batches()
        try:
            await self.relay.send_now([m for each in results if each for m in each.outgoing])
        finally:  # committed, so answered even if the send is cut short: the relay sends
            for waiting, stored in zip(batch, results, strict=True):
                if stored is not None and not waiting.stored.done():  # done: cancelled
                    waiting.stored.set_result(stored)

    async def close(self) -> None:
        """Once no request is coming: waits for the batches under way."""
        while self.batches:
            await asyncio.gather(*self.batches, return_exceptions=True)

    async def store(self, batch: list[Waiting]) -> Sequence[Stored | None]:
        """The batch's publishes stored; those that failed get their error and None."""
        PUBLISH_BATCH.observe(len(batch))
        publications = [waiting.publication for waiting in batch]
        try:
            return await store_together(self.engine, publications, shards=self.shards)
        except DatabaseUnavailable as error:
            fail(batch, error)
        except Exception as error:
            if len(batch) == 1:
                fail(batch, error)
            else:  # whichever publish it was fails alone
                logger.warning("a batch of %d failed, storing each alone: %r", len(batch), error)
                return [result for each in batch for result in await self.store([each])]
        return [None] * len(batch)


def fail(batch: Sequence[Waiting], error: BaseException) -> None:
    for waiting in batch:
        if not waiting.stored.done():
            waiting.stored.set_exception(error)
