"""The connection side. A worker opens its share of the SSE connections at its share of the
ramp rate, holds them until the run stops, and counts what arrives on them. One worker runs
in the main process, or one in each child process (--processes)."""

import asyncio
import os
import signal
from array import array
from collections.abc import Callable
from multiprocessing.connection import Connection
from time import monotonic, process_time
from typing import cast

from services.core.tokens import mint_token
from services.loadtest.report import percentile
from services.loadtest.shared import (
    DELIVERIES,
    FAILED,
    HELD,
    RAMP_DONE,
    RECENT_P99,
    Plan,
    Received,
    Shared,
    raise_open_files_limit,
    rss_kib,
    until,
)
from services.loadtest.wire import (
    TOKEN_SECONDS,
    Frame,
    ProtocolError,
    StreamParser,
    address_of,
    connected_socket,
    stream_request,
    target,
)
from services.memory import settle_after_startup

TICK_SECONDS = 0.25  # how often a worker publishes its counters


def retry_only(frames: list[Frame]) -> bool:
    """Nothing but `retry:` hints: how a node says "come back later" (full, or unable to
    subscribe or to read Postgres), where a stream it serves starts with `event: stats`."""
    return all(frame.retry is not None and frame.data is None for frame in frames)


class Worker:
    def __init__(self, plan: Plan, shared: Shared) -> None:
        self.plan, self.shared = plan, shared
        self.targets = [target(url) for url in plan.streams]
        # Connection i opens from source (i // streams) % sources, so that every stream URL
        # is reached from every source.
        self.addresses = {
            (stream, source): address_of(where, source)
            for stream, where in enumerate(self.targets)
            for source in plan.sources
        }
        self.marker = f'"assignmentId":"lt-{plan.run_id}-'.encode()
        per_request = array("i", bytes(4 * len(shared.starts)))
        self.received = Received(open_by_stream=[0] * len(plan.streams), per_request=per_request)
        self.resolved = 0  # connections held or failed
        self.open_by_stream = [0] * len(plan.streams)
        self.deliveries = 0
        self.reported = 0  # latencies already summarized in a recent p99
        self.stopping = False
        self.parent = os.getppid()

    async def run(self) -> Received:
        received, shared = self.received, self.shared
        settle_after_startup()
        received.rss_before_kib = rss_kib(os.getpid())
        indexes = self.plan.indexes()
        tasks: set[asyncio.Task[None]] = set()
        ticker = asyncio.create_task(self.tick(len(indexes)))
        received.ramp_started = started = monotonic()
        try:
            for number, index in enumerate(indexes):
                delay = started + number / self.plan.ramp_per_second - monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if shared.stopping:
                    break
                task = asyncio.create_task(self.hold(index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await until(lambda: shared.stopping or os.getppid() != self.parent)
        finally:
            self.stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            ticker.cancel()
            self.report(len(indexes))
        return received

    async def tick(self, total: int) -> None:
        while True:
            self.report(total)
            await asyncio.sleep(TICK_SECONDS)

    def report(self, total: int) -> None:
        """This worker's counters, into shared memory for the parent's progress line."""
        worker, shared, received = self.plan.worker, self.shared, self.received
        shared.set(worker, HELD, received.held)
        shared.set(worker, FAILED, sum(received.failures.values()))
        shared.set(worker, DELIVERIES, self.deliveries)
        if self.reported < len(received.latencies):
            recent_p99 = percentile(sorted(received.latencies[self.reported :]), 0.99)
            shared.set(worker, RECENT_P99, recent_p99)
            self.reported = len(received.latencies)
        if (self.resolved >= total or self.stopping) and not shared.get(worker, RAMP_DONE):
            received.rss_held_kib = rss_kib(os.getpid())
            received.open_by_stream = list(self.open_by_stream)
            shared.set(worker, RAMP_DONE, 1)

    def fail(self, kind: str) -> None:
        self.received.failures[kind] += 1
        self.resolved += 1

    async def hold(self, index: int) -> None:
        plan, received = self.plan, self.received
        student, stream = index % plan.students, index % len(self.targets)
        where = self.targets[stream]
        student_id = f"lt-{plan.run_id}-{student}"
        token = mint_token(student_id, plan.secret, TOKEN_SECONDS)
        request = stream_request(where.netloc, where.path, student_id, token, plan.last_event_id)
        started, held = monotonic(), False
        client = StreamClient(request)
        try:
            try:
                async with asyncio.timeout(plan.connect_timeout):
                    await self.connect(client, stream, index)
                    refused = await client.opened
            except TimeoutError:
                return self.fail("timeout")
            except OSError:
                return self.fail("connect")
            if refused is not None:
                return self.fail(refused)
            held = True
            self.resolved += 1
            self.open_by_stream[stream] += 1
            self.shared.open[student] += 1
            received.held += 1
            received.last_held = monotonic()
            received.connect_seconds.append(received.last_held - started)
            client.start(self.deliver)
            await client.closed
        finally:
            if held:
                self.open_by_stream[stream] -= 1
                self.shared.open[student] -= 1
                if not self.stopping:
                    ended = "sent back" if client.quiet else "ended by the node"
                    received.drops[ended if client.parser.ended else "broken"] += 1
            if client.transport is not None:
                client.transport.abort()

    async def connect(self, client: "StreamClient", stream: int, index: int) -> None:
        """Connection `index` to stream URL `stream`, from its source address if given."""
        loop, sources, where = asyncio.get_running_loop(), self.plan.sources, self.targets[stream]
        if not sources:
            await loop.create_connection(lambda: client, where.host, where.port, ssl=where.ssl)
            return
        source = sources[index // len(self.targets) % len(sources)]
        sock = await connected_socket(source, self.addresses[stream, source])
        hostname = where.host if where.ssl else None
        await loop.create_connection(
            lambda: client, sock=sock, ssl=where.ssl, server_hostname=hostname
        )

    def deliver(self, frames: list[Frame], last_id: int) -> int:
        """Counts the run's grades among the frames, matched to their publish request by
        assignmentId without parsing the JSON; returns the connection's last event id."""
        received, marker, now = self.received, self.marker, 0.0
        for frame in frames:
            data = frame.data
            if frame.event != b"grade" or data is None:
                continue
            at = data.find(marker) + len(marker)
            end = data.find(b'"', at)
            number = int(data[at:end]) if at >= len(marker) and data[at:end].isdigit() else 0
            if not 0 < number < len(received.per_request):
                received.foreign += 1
                continue
            if frame.id is not None and frame.id.isdigit():
                if int(frame.id) <= last_id:
                    received.duplicates += 1
                    continue
                last_id = int(frame.id)
            if not now:
                now = monotonic()
                received.first_receipt = received.first_receipt or now
                received.last_receipt = now
            received.per_request[number] += 1
            self.deliveries += 1
            if start := self.shared.starts[number]:
                received.latencies.append(now - start)
        return last_id


class StreamClient(asyncio.Protocol):
    """One stream connection, parsed in data_received as its bytes arrive: a task woken for
    every read would cost the load generator more than the node spends sending the frame.
    `opened` resolves with the first frames: to None, or to why the stream did not open, as
    the summary counts it. From start() on, frames go to the worker as they come, and
    `closed` resolves when the stream ends."""

    def __init__(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.parser = StreamParser()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[str | None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.pending: list[Frame] = []  # frames that came before start()
        self.deliver: Callable[[list[Frame], int], int] | None = None
        self.last_id = -1
        self.quiet = True  # nothing but `retry:` so far

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.write(self.request)

    def start(self, deliver: Callable[[list[Frame], int], int]) -> None:
        self.deliver = deliver
        self.received(self.pending)
        self.pending = []

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        try:
            frames = parser.feed(data)
        except ProtocolError:
            self.end("protocol")
            return
        if not self.opened.done():
            if parser.status not in (0, 200) or (frames and parser.status != 200):
                self.end(f"status {parser.status}")
                return
            if frames:
                self.opened.set_result(None)
            elif parser.ended:
                self.end("closed early")
                return
        if self.deliver is None:
            self.pending += frames
        else:
            self.received(frames)
        if parser.ended:
            self.end("closed early")

    def received(self, frames: list[Frame]) -> None:
        assert self.deliver is not None
        if frames:
            self.quiet = self.quiet and retry_only(frames)
            self.last_id = self.deliver(frames, self.last_id)

    def end(self, refused: str) -> None:
        """The stream is over: if it never opened, it was refused."""
        if not self.opened.done():
            self.opened.set_result(refused)
        if not self.closed.done():
            self.closed.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.end("closed early")


def child_main(plan: Plan, shared: Shared, results: Connection) -> None:
    """A child process's worker (multiprocessing, 'spawn'): its Received goes back through
    the pipe at the end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    raise_open_files_limit()
    import uvloop

    received = uvloop.run(Worker(plan, shared).run())
    received.cpu_seconds = process_time()
    results.send(received)
    results.close()
