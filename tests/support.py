"""What the tests share: real service processes, an SSE reader, factories."""

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services import launch
from services.core.tokens import mint_token

ROOT = Path(__file__).resolve().parents[1]
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
PUBLISHER_KEYS = ("test-key-one", "test-key-two")
MANAGEMENT_URL = "http://127.0.0.1:15672/api"
MANAGEMENT_AUTH = ("guest", "guest")


TABLES = ("notifications", "student_sequences", "idempotency_keys")
# Outbox rows come and go (the relay deletes the sent ones once a second, whenever that
# is): what was ever written there is told by the ids handed out.
OUTBOX_WRITTEN = "SELECT coalesce(pg_sequence_last_value('outbox_id_seq'), 0)"


def token_for(student_id: str, ttl_seconds: float = 600, tenant_id: str | None = None) -> str:
    return mint_token(student_id, JWT_SECRET, ttl_seconds, tenant_id)


async def row_counts(db: AsyncEngine) -> dict[str, int]:
    """Rows per table, and outbox rows ever written: equal before and after, nothing was."""
    async with db.connect() as connection:
        counts = {
            table: (await connection.scalar(text(f"SELECT count(*) FROM {table}"))) or 0
            for table in TABLES
        }
        counts["outbox written"] = await connection.scalar(text(OUTBOX_WRITTEN)) or 0
    return counts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique(prefix: str = "student") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class ServiceProcess:
    """A gradecast service run as users run it (services.launch)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, port: int | None = None):
        self.args, self.env, self.log, self.port = args, env, log, port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> "ServiceProcess":
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*launch.GRADECAST, *self.args],
                env={**os.environ, **self.env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, seconds: float = 30) -> None:
        process = self.process
        assert process is not None
        state = launch.wait_ready(f"{self.url}/ready", process.poll, seconds)
        if state != "ready":
            raise RuntimeError(f"{self.args} {state}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None:
            launch.stop(self.process, 15)


@dataclass
class Event:
    id: str | None = None
    event: str | None = None
    data: str = ""

    def json(self) -> Any:
        return orjson.loads(self.data)


class EventReader:
    """Parses a text/event-stream response. A task reads the lines into a queue, so that a
    read that times out loses nothing and leaves the stream readable."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self.retry: int | None = None
        self.unread: list[int] = []  # every `stats` event's count, which next_event skips
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.partial = Event()
        self.reading = asyncio.create_task(self.read_lines())

    async def read_lines(self) -> None:
        try:
            async for line in self.response.aiter_lines():
                self.lines.put_nowait(line)
        except httpx.HTTPError:
            pass
        finally:
            self.lines.put_nowait(None)

    async def close(self) -> None:
        self.reading.cancel()
        await asyncio.gather(self.reading, return_exceptions=True)

    async def next_event(self, seconds: float = 10) -> Event:
        """The next event; raises TimeoutError when none comes, EOFError when the stream ends."""
        async with asyncio.timeout(seconds):
            while (line := await self.lines.get()) is not None:
                event = self.partial
                if line == "":
                    if event.event == "stats":
                        self.unread.append(event.json()["unread"])
                        self.partial = event = Event()
                    if event.event or event.data:
                        self.partial = Event()
                        return event
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    self.comments.append(value)
                elif name == "retry":
                    self.retry = int(value)
                elif name == "id":
                    event.id = value
                elif name == "event":
                    event.event = value
                elif name == "data":
                    event.data = f"{event.data}\n{value}" if event.data else value
            self.lines.put_nowait(None)  # stays ended for the next call
            raise EOFError("the stream ended")

    async def events(self, count: int, seconds: float = 15) -> list[Event]:
        return [await self.next_event(seconds) for _ in range(count)]

    async def assert_quiet(self, seconds: float) -> None:
        """No event arrives within `seconds` (keepalives may)."""
        try:
            event = await self.next_event(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event: {event}")


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    node_url: str,
    student_id: str,
    token: str | None,
    query: str = "",
    **headers: str,
) -> AsyncIterator[EventReader]:
    """A student's stream; the token goes in the Authorization header unless None."""
    if token is not None:
        headers = {"Authorization": f"Bearer {token}", **headers}
    url = f"{node_url}/notifications/stream/{student_id}{query}"
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        reader = EventReader(response)
        try:
            yield reader
        finally:
            await reader.close()


def grade_body(student_ids: str | list[str], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"assignmentId": unique("hw"), "grade": 17, **fields}
    key = "studentId" if isinstance(student_ids, str) else "studentIds"
    return {key: student_ids, **body}


async def publish(
    client: httpx.AsyncClient, publisher_url: str, body: dict[str, Any], **headers: str
) -> dict[str, Any]:
    response = await client.post(
        f"{publisher_url}/grades/publish",
        json=body,
        headers={"Authorization": f"Bearer {PUBLISHER_KEYS[0]}", **headers},
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def queue_bindings(vhost: str, queue: str) -> set[str]:
    """Routing keys bound to a queue, from the RabbitMQ management API."""
    url = f"{MANAGEMENT_URL}/queues/{vhost}/{queue}/bindings"
    response = httpx.get(url, auth=MANAGEMENT_AUTH, timeout=5)
    response.raise_for_status()
    return {b["routing_key"] for b in response.json() if b["source"]}


async def is_ready(service: ServiceProcess) -> bool:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"{service.url}/ready")).status_code == 200


async def is_not_ready(service: ServiceProcess) -> bool:
    return not await is_ready(service)


async def eventually(check: Any, seconds: float = 10, interval: float = 0.1) -> None:
    """Polls `check` (returning truthy when met) until it holds."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {seconds} s: {check}")
        await asyncio.sleep(interval)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A Prometheus scrape's samples by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)
