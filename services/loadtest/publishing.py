"""The publishing side: requests to POST /grades/publish at a set rate with a bounded number
in flight. Each grade's assignmentId names its request (`lt-<run>-<n>`), so that a frame
received anywhere is matched to the request's start time; each 201 adds to the expected
deliveries the connections open for its students at that moment."""

import asyncio
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic

import aiohttp
import orjson

from services.loadtest.shared import Shared

REQUEST_TIMEOUT_SECONDS = 30
# Idle connections are dropped before the server's own keep-alive timeout (uvicorn: 5 s)
# closes them, which a request sent at that moment would see as a disconnect.
KEEPALIVE_SECONDS = 2.0
FINISH_SECONDS = 10  # how long requests in flight may finish once publishing stops

# A request's students (indexes), None for every student of the run.
Recipients = Callable[[int], list[int] | None]


@dataclass
class Published:
    answered: bytearray  # 1 at the number of each request answered 201
    requests: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # "status 429", "TimeoutError", ...
    latencies: "array[float]" = field(default_factory=lambda: array("d"))  # seconds, answered ones
    sent_at: "array[float]" = field(default_factory=lambda: array("d"))  # theirs, monotonic()
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
        publishing stops after `publishes` requests, `seconds`, or `stop`. aiohttp, whose
        requests cost the load generator a tenth of the CPU of httpx's."""
        connector = aiohttp.TCPConnector(
            limit=self.concurrency, keepalive_timeout=KEEPALIVE_SECONDS
        )
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        slots = asyncio.Semaphore(self.concurrency)  # a slot per request in flight
        tasks: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            started = monotonic()
            deadline = started + seconds
            for number in range(1, publishes + 1):
                await pause(stop, started + (number - 1) / rate - monotonic())
                if stop.is_set() or monotonic() >= deadline:
                    break
                await slots.acquire()
                if stop.is_set() or monotonic() >= deadline:
                    slots.release()
                    break
                task = asyncio.create_task(self.request(session, number, recipients(number)))
                tasks.add(task)
                task.add_done_callback(finished)
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=FINISH_SECONDS)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        return self.published

    async def request(
        self, session: aiohttp.ClientSession, number: int, students: list[int] | None
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
            async with session.post(self.endpoint, data=content, headers=self.headers) as answer:
                status, answer_body = answer.status, await answer.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            published.failures[type(error).__name__] += 1
            return
        except asyncio.CancelledError:
            published.failures["unfinished"] += 1
            raise
        answered = monotonic()
        published.latencies.append(answered - started)
        published.sent_at.append(started)
        published.last_answer = max(published.last_answer, answered)
        if status != 201:
            published.failures[f"status {status}"] += 1
            return
        published.expected += self.shared.open_for(students)
        published.ok += 1
        published.answered[number] = 1
        try:
            published.stored += int(orjson.loads(answer_body)["count"])
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
