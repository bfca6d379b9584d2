"""Which shards this node's queue is bound to: a shard's routing key is bound while at least
one of its students is connected here, and unbound when the last one leaves."""

import asyncio
import logging
from collections import Counter, defaultdict

from aio_pika.abc import AbstractExchange, AbstractQueue

from services.core.broker import routing_key

logger = logging.getLogger(__name__)


class ShardBindings:
    def __init__(self, queue: AbstractQueue, exchange: AbstractExchange) -> None:
        self.queue = queue
        self.exchange = exchange
        self.users: Counter[int] = Counter()  # connections per shard
        self.bound: set[int] = set()
        self.locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.unbinding: set[asyncio.Task[None]] = set()

    async def acquire(self, shard: int) -> None:
        """Returns once the shard is bound, so no later publish can miss this node."""
        self.users[shard] += 1
        try:
            await self.reconcile(shard)
        except BaseException:
            self.release(shard)
            raise

    def release(self, shard: int) -> None:
        """Synchronous, so it can run in any cleanup path; the unbind happens in a task."""
        self.users[shard] -= 1
        if self.users[shard] <= 0:
            del self.users[shard]
            task = asyncio.get_running_loop().create_task(self.reconcile(shard))
            self.unbinding.add(task)
            task.add_done_callback(self.unbinding.discard)

    async def reconcile(self, shard: int) -> None:
        """Make the broker match the count; one bind or unbind of a shard at a time."""
        async with self.locks[shard]:
            wanted = self.users[shard] > 0
            key = routing_key(shard)
            if wanted and shard not in self.bound:
                await self.queue.bind(self.exchange, key)
                self.bound.add(shard)
            elif not wanted and shard in self.bound:
                try:
                    await self.queue.unbind(self.exchange, key)
                except Exception as error:  # a stale binding only brings messages we drop
                    logger.warning("could not unbind %s: %r", key, error)
                    return
                self.bound.discard(shard)

    async def close(self) -> None:
        for task in list(self.unbinding):
            task.cancel()
        await asyncio.gather(*self.unbinding, return_exceptions=True)
