"""The publishing side: requests to POST /grades/publish at a set rate with a bounded number
in flight. Each grade's assignmentId names its request (`lt-<run>-<n>`), so that a frame
received anywhere is matched to the request's start time; each 201 adds to the expected
deliveries the connections open for its students at that moment."""

import asyncio
import importlib.util
import math
import sys
from array import array
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from time import monotonic

import httpx
import orjson

from services.loadtest.shared import Shared

REQUEST_TIMEOUT_SECONDS = 30
# Idle connections are dropped before the server's own keep-alive timeout (uvicorn: 5 s)
# closes them, which a request sent at that moment would see as a ReadError.
KEEPALIVE_SECONDS = 2.0
PER_CLIENT = 8  # connections per httpx client
FINISH_SECONDS = 10  # how long requests in flight may finish once publishing stops

# httpcore imports sniffio for every request, and an import that fails is tried afresh each
# time (~50 µs, several per request): where it is not installed, make it fail at once.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

# A request's students (indexes), None for every student of the run.
Recipients = Callable[[int], list[int] | None]


@dataclass
class Published:
    answered: bytearray  # 1 at the number of each request answered 201
    requests: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # "status 429", "ReadTimeout", ...
    latencies: "array[float]" = field(default_factory=lambda: array("d"))  # seconds, answered ones
    expected: int = 0  # deliveries: open connections of the recipients, summed over 201s
    stored: int = 0  # notifications, the sum of the 201 answers' count
    first_start: float = 0.0
    last_answer: float = 0.0


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps, or less when the run is stopped."""
    if seconds <= 0:
        return
    if seconds < 0.5:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def finished(
    tasks: set[asyncio.Task[None]],
    slots: "asyncio.Queue[httpx.AsyncClient]",
    client: httpx.AsyncClient,
    task: asyncio.Task[None],
) -> None:
    tasks.discard(task)
    slots.put_nowait(client)


class Publisher:
    def __init__(
        self, url: str, key: str, run_id: str, students: int, shared: Shared, concurrency: int
    ) -> None:
        self.endpoint = url.rstrip("/") + "/grades/publish"
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.run_id, self.shared, self.concurrency = run_id, shared, concurrency
        self.student_ids = [f"lt-{run_id}-{student}" for student in range(students)]
        self.published = Published(answered=bytearray(len(shared.starts)))

    async def run(
        self,
        recipients: Recipients,
        publishes: int,
        rate: float,
        seconds: float,
        stop: asyncio.Event,
    ) -> Published:
        """Request n starts at n / rate seconds, when fewer than `concurrency` are in flight;
        publishing stops after `publishes` requests, `seconds`, or `stop`. The requests go
        through several small clients: an httpx pool's cost per request grows with its size."""
        limits = httpx.Limits(
            max_connections=PER_CLIENT,
            max_keepalive_connections=PER_CLIENT,
            keepalive_expiry=KEEPALIVE_SECONDS,
        )
        verify = httpx.create_ssl_context()  # one for every client: each costs ~40 ms
        slots: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()  # one per request in flight
        tasks: set[asyncio.Task[None]] = set()
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(verify=verify, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits)
                )
                for _ in range(math.ceil(self.concurrency / PER_CLIENT))
            ]
            for slot in range(self.concurrency):
                slots.put_nowait(clients[slot % len(clients)])
            started = monotonic()
            deadline = started + seconds
            for number in range(1, publishes + 1):
                await pause(stop, started + (number - 1) / rate - monotonic())
                if stop.is_set() or monotonic() >= deadline:
                    break
                client = await slots.get()
                if stop.is_set() or monotonic() >= deadline:
                    break
                task = asyncio.create_task(self.request(client, number, recipients(number)))
                tasks.add(task)
                task.add_done_callback(partial(finished, tasks, slots, client))
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=FINISH_SECONDS)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        return self.published

    async def request(
        self, client: httpx.AsyncClient, number: int, students: list[int] | None
    ) -> None:
        published = self.published
        body: dict[str, object] = {
            "assignmentId": f"lt-{self.run_id}-{number}",
            "grade": number % 101,
            "courseId": "loadtest",
        }
        if students is not None and len(students) == 1:
            body["studentId"] = self.student_ids[students[0]]
        else:
            ids = self.student_ids if students is None else [self.student_ids[s] for s in students]
            body["studentIds"] = ids
        content = orjson.dumps(body)
        published.requests += 1
        started = monotonic()
        self.shared.starts[number] = started  # before sending: a receipt always finds it
        published.first_start = published.first_start or started
        try:
            response = await client.post(self.endpoint, content=content, headers=self.headers)
        except httpx.HTTPError as error:
            published.failures[type(error).__name__] += 1
            return
        except asyncio.CancelledError:
            published.failures["unfinished"] += 1
            raise
        answered = monotonic()
        published.latencies.append(answered - started)
        published.last_answer = max(published.last_answer, answered)
        if response.status_code != 201:
            published.failures[f"status {response.status_code}"] += 1
            return
        published.expected += self.shared.open_for(students)
        published.ok += 1
        published.answered[number] = 1
        try:
            published.stored += int(orjson.loads(response.content)["count"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass


def recipients_for(mode: str, targets: list[int], batch_size: int) -> Recipients:
    """single: one student per request, round-robin over `targets` (the students with a
    held connection); batch: `batch_size` of them; broadcast: every student."""
    if mode == "broadcast":
        return lambda number: None
    size = 1 if mode in ("single", "replay") else max(1, min(batch_size, len(targets)))
    count = len(targets)
    return lambda number: [targets[k % count] for k in range((number - 1) * size, number * size)]
