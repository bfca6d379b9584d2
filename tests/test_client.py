"""The client (services/client.py) and its commands, against the real services."""

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from services.client import (
    Event,
    EventParser,
    GradecastError,
    PublisherClient,
    StreamClient,
    typed,
)
from services.client_cli import until_interrupted
from services.core.events import NotificationPublic
from services.launch import GRADECAST
from tests.conftest import Services
from tests.support import PUBLISHER_KEYS, ROOT, ServiceProcess, free_port, token_for, unique
from tests.test_cli import gradecast

KEY = PUBLISHER_KEYS[0]


class Listening:
    """StreamClient.listen() read by a task of its own, so that waiting for an event that
    does not come loses nothing and leaves it listening."""

    def __init__(self, node_url: str, student_id: str, last_event_id: str | None = None) -> None:
        self.client = StreamClient(node_url)
        self.student_id, self.last_event_id = student_id, last_event_id
        self.events: asyncio.Queue[Event | Exception] = asyncio.Queue()

    async def __aenter__(self) -> "Listening":
        self.task = asyncio.create_task(self.read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.aclose()

    async def read(self) -> None:
        token = token_for(self.student_id)
        events = self.client.listen(self.student_id, token, last_event_id=self.last_event_id)
        try:
            async with aclosing(events):
                async for event in events:
                    self.events.put_nowait(event)
        except Exception as error:
            self.events.put_nowait(error)

    async def next_grade(self, seconds: float = 20) -> NotificationPublic:
        async with asyncio.timeout(seconds):
            while True:
                event = await self.events.get()
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, NotificationPublic):
                    return event

    async def grade_ids(self, count: int) -> list[str]:
        return [(await self.next_grade()).id for _ in range(count)]


async def publish_one(gradebook: PublisherClient, student_id: str, grade: Any = 17) -> str:
    result = await gradebook.publish(
        student_ids=student_id, assignment_id=unique("hw"), grade=grade
    )
    assert result.count == 1
    return result.notifications[0].id


async def retained(node: ServiceProcess, student_id: str) -> list[dict[str, Any]]:
    """Every notification the student has, from the missed endpoint."""
    headers = {"Authorization": f"Bearer {token_for(student_id)}"}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{node.url}/notifications/missed/{student_id}", headers=headers)
    assert response.status_code == 200, response.text
    notifications: list[dict[str, Any]] = response.json()["notifications"]
    return notifications


async def test_a_published_grade_reaches_the_listener(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    student, other = unique(), unique()
    async with PublisherClient(publisher.url, KEY) as gradebook:
        result = await gradebook.publish(
            student_ids=[student, other],
            assignment_id="essay-1",
            grade="A-",
            teacher_comment="Well argued.\nLine two: \u2028 data: id: 9",
            course_id="eng-101",
            assignment_title="Essay 1",
        )
        assert result.count == 2
        assert [n.student_id for n in result.notifications] == [student, other]
        # From before the stream opened, replayed after id 0; then live.
        async with Listening(node_a.url, student, last_event_id="0") as listening:
            grade = await listening.next_grade()
            live = await publish_one(gradebook, student, grade=9.5)
            assert (await listening.next_grade()).id == live
    assert grade.id == result.notifications[0].id
    assert grade.published_at == result.notifications[0].published_at
    assert (grade.student_id, grade.assignment_id, grade.grade) == (student, "essay-1", "A-")
    assert grade.teacher_comment == "Well argued.\nLine two: \u2028 data: id: 9"
    assert (grade.course_id, grade.assignment_title) == ("eng-101", "Essay 1")


async def test_listen_resumes_after_its_node_is_killed_with_nothing_lost_or_twice(
    services: Services, publisher: ServiceProcess
) -> None:
    node = services.start("stream", "--node-id", unique("node"))
    student = unique()
    async with PublisherClient(publisher.url, KEY) as gradebook:
        first = await publish_one(gradebook, student)
        async with Listening(node.url, student, last_event_id="0") as listening:
            assert (await listening.next_grade()).id == first
            assert node.process is not None
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(10)
            meanwhile = [await publish_one(gradebook, student) for _ in range(3)]
            await asyncio.sleep(1)  # the client tries, and is refused, a few times
            await asyncio.to_thread(
                services.start, "stream", "--node-id", unique("node"), port=node.port
            )
            assert await listening.grade_ids(3) == meanwhile
            live = await publish_one(gradebook, student)
            assert await listening.grade_ids(1) == [live]  # nothing came twice before it


async def test_the_same_idempotency_key_publishes_once(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    student, key, assignment = unique(), unique("run"), unique("hw")
    async with PublisherClient(publisher.url, KEY) as gradebook:
        answers = [
            await gradebook.publish(
                student_ids=student, assignment_id=assignment, grade=17, idempotency_key=key
            )
            for _ in range(2)
        ]
        # Without a key of the caller's, every call has a new one: the same body twice is two.
        twice = [
            await gradebook.publish(student_ids=student, assignment_id=assignment, grade=17)
            for _ in range(2)
        ]
        with pytest.raises(GradecastError) as conflict:  # the same key, another body
            await gradebook.publish(
                student_ids=student, assignment_id=assignment, grade=18, idempotency_key=key
            )
    assert answers[0] == answers[1]
    assert (conflict.value.status, conflict.value.code) == (409, "conflict")
    ids = [answers[0].notifications[0].id, *(answer.notifications[0].id for answer in twice)]
    assert [n["id"] for n in await retained(node_a, student)] == ids


@asynccontextmanager
async def losing_the_first_answer(target_port: int) -> AsyncIterator[str]:
    """A proxy to the publisher that passes the first request on but drops the connection
    as the answer comes back, as a network fault would: served, but never answered."""
    connections = 0
    tasks: set[asyncio.Future[None]] = set()

    async def forward(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                target.write(data)
                await target.drain()
        except OSError:
            pass
        finally:
            target.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", target_port)
        request = asyncio.ensure_future(forward(reader, upstream))
        tasks.add(request)
        if connections == 1:
            await upstream_reader.read(1)  # the answer begins: lose it
            writer.transport.abort()
        else:
            await forward(upstream_reader, writer)
        await request

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert connections == 2, "the first answer was not lost, or not retried"


async def test_a_publish_whose_answer_was_lost_is_retried_and_stored_once(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    student = unique()
    async with losing_the_first_answer(publisher.port or 0) as url:
        async with PublisherClient(url, KEY) as gradebook:
            published = await publish_one(gradebook, student)
    assert [n["id"] for n in await retained(node_a, student)] == [published]


async def test_publish_retries_until_the_publisher_answers(
    services: Services, node_a: ServiceProcess
) -> None:
    port, student = free_port(), unique()
    async with PublisherClient(f"http://127.0.0.1:{port}", KEY, retries=1) as gradebook:
        with pytest.raises(GradecastError) as unreachable:
            await publish_one(gradebook, student)
    assert (unreachable.value.status, unreachable.value.code) == (None, "unreachable")

    async with PublisherClient(f"http://127.0.0.1:{port}", KEY, retries=8) as gradebook:
        publishing = asyncio.create_task(publish_one(gradebook, student))
        await asyncio.sleep(0.5)
        assert not publishing.done()  # refused, and trying again
        await asyncio.to_thread(services.start, "publisher", port=port)
        published = await publishing
    assert [n["id"] for n in await retained(node_a, student)] == [published]


async def test_publish_waits_out_a_rate_limit(services: Services) -> None:
    slow = await asyncio.to_thread(
        services.start, "publisher", PUBLISH_RATE_PER_SECOND="1", PUBLISH_BURST="1"
    )
    student = unique()
    async with (
        PublisherClient(slow.url, KEY, retries=0) as impatient,
        PublisherClient(slow.url, KEY, retries=1) as patient,
    ):
        await publish_one(impatient, student)
        with pytest.raises(GradecastError) as refused:
            await publish_one(impatient, student)
        started = time.monotonic()
        await publish_one(patient, student)
    assert (refused.value.status, refused.value.code) == (429, "too_many_requests")
    assert time.monotonic() - started >= 0.9  # its one retry waited for Retry-After: 1


async def test_refused_publishes_raise_with_the_status_code_and_message(
    publisher: ServiceProcess,
) -> None:
    async with PublisherClient(publisher.url, KEY) as gradebook:
        with pytest.raises(GradecastError) as invalid:
            await gradebook.publish(student_ids=unique(), assignment_id="not an id!", grade=1)
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_request")
    assert "assignmentId" in invalid.value.message
    async with PublisherClient(publisher.url, "not-a-key") as stranger:
        with pytest.raises(GradecastError) as unauthorized:
            await publish_one(stranger, unique())
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")


async def test_listen_raises_for_a_token_a_reconnect_would_not_fix(
    node_a: ServiceProcess,
) -> None:
    student = unique()
    async with StreamClient(node_a.url) as client:
        for token, status in (("not-a-token", 401), (token_for(unique()), 403)):
            with pytest.raises(GradecastError) as refused:
                async with asyncio.timeout(10), aclosing(client.listen(student, token)) as events:
                    await anext(events)
            assert refused.value.status == status


async def test_listen_waits_out_a_429_then_connects(
    services: Services, publisher: ServiceProcess
) -> None:
    node = await asyncio.to_thread(
        services.start,
        "stream",
        "--node-id",
        unique("node"),
        CONNECT_RATE_PER_SECOND="1",
        CONNECT_BURST="1",
    )
    student = unique()
    async with PublisherClient(publisher.url, KEY) as gradebook:
        published = await publish_one(gradebook, student)
    async with Listening(node.url, student, last_event_id="0") as first:
        assert (await first.next_grade()).id == published  # the one connection allowed
        headers = {"Authorization": f"Bearer {token_for(student)}"}
        url = f"{node.url}/notifications/stream/{student}"
        async with (
            httpx.AsyncClient(timeout=10) as http,
            http.stream("GET", url, headers=headers) as refused,
        ):
            assert refused.status_code == 429 and "Retry-After" in refused.headers
        async with Listening(node.url, student, last_event_id="0") as second:
            assert (await second.next_grade()).id == published


def test_the_event_parser_reads_any_line_ends_in_any_chunks() -> None:
    grade = NotificationPublic(
        id="7",
        student_id="s1",
        assignment_id="hw",
        grade=17,
        teacher_comment=None,
        course_id=None,
        assignment_title=None,
        published_at=datetime(2026, 11, 21, 9, 30, tzinfo=UTC),
    ).model_dump_json()
    stream = (
        f": keepalive\r\nretry: 500\n\nid: 7\revent: grade\r\ndata: {grade}\n\n"
        'event: reset\ndata: {"reason":\r\ndata:"expired"}\r\n\r\ndata\n\n'
        f"id: 7\nevent: grade\ndata:{grade}\r\r"
    )
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1, 7):
            parser = EventParser()
            events = [*parser.feed(stream[:i]), *parser.feed(stream[i:j]), *parser.feed(stream[j:])]
            assert events == [
                ("grade", grade),
                ("reset", '{"reason":\n"expired"}'),
                ("message", ""),
                ("grade", grade),
            ]
            assert parser.last_id == "7" and parser.retry_seconds == 0.5
    seen: set[str] = set()
    assert [typed(name, data, seen) for name, data in events] == [
        NotificationPublic.model_validate_json(grade),
        typed("reset", '{"reason":\n"expired"}', set()),
        typed("message", "", set()),
        None,  # the same grade again
    ]


def test_cli_publish_prints_the_answer_and_sends_numbers_as_numbers(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    student, other = unique(), unique()
    answers = []
    for grade, key in (("17", {"GRADECAST_PUBLISHER_KEY": KEY}), ("A-", {}), ("9.5", {})):
        flags = () if key else ("--key", KEY)
        result = gradecast(
            "publish",
            "--url",
            publisher.url,
            *flags,
            student,
            other,
            "--assignment",
            unique("hw"),
            "--grade",
            grade,
            "--comment",
            "Good.",
            "--course",
            "math-1",
            "--title",
            "Sums",
            **key,
        )
        assert result.returncode == 0, result.stderr
        answers.append(json.loads(result.stdout))
    assert [answer["count"] for answer in answers] == [2, 2, 2]
    assert [n["studentId"] for n in answers[0]["notifications"]] == [student, other]
    stored = asyncio.run(retained(node_a, student))
    assert [n["grade"] for n in stored] == [17, "A-", 9.5]
    assert [n["id"] for n in stored] == [a["notifications"][0]["id"] for a in answers]
    assert {(n["teacherComment"], n["courseId"], n["assignmentTitle"]) for n in stored} == {
        ("Good.", "math-1", "Sums")
    }

    again = gradecast("publish", "--url", publisher.url, "s1", "--assignment", "a", "--grade", "1")
    assert again.returncode == 1 and "GRADECAST_PUBLISHER_KEY" in again.stderr
    bad = gradecast(
        "publish", "--url", publisher.url, "--key", KEY, "s 1", "--assignment", "a", "--grade", "1"
    )
    assert bad.returncode == 1 and "422 invalid_request" in bad.stderr, bad.stderr


async def test_cli_listen_prints_a_line_per_event_until_ctrl_c(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    student = unique()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRADECAST_")}
    process = await asyncio.create_subprocess_exec(
        *GRADECAST,
        "listen",
        "--url",
        node_a.url,
        student,
        "--last-event-id",
        "0",
        env={**environment, "GRADECAST_TOKEN": token_for(student)},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        async with PublisherClient(publisher.url, KEY) as gradebook:
            published = await publish_one(gradebook, student, grade="B+")
        async with asyncio.timeout(30):
            while True:
                line = await process.stdout.readline()
                assert line, await process.stderr.read()
                event = json.loads(line)
                if event["event"] == "grade":
                    break
        assert event["data"]["id"] == published
        assert (event["data"]["studentId"], event["data"]["grade"]) == (student, "B+")
        process.send_signal(signal.SIGINT)
        _, errors = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, errors
    assert b"Traceback" not in errors, errors


async def test_ctrl_c_is_sent_again_until_the_listener_stops() -> None:
    """A first cancel that is lost (as anyio's CancelScope can lose one while httpx
    connects) does not leave `gradecast listen` running."""
    lost = []

    async def losing_the_first_cancel() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            lost.append(task.uncancel())
        await asyncio.sleep(30)

    listening = asyncio.create_task(until_interrupted(losing_the_first_cancel()))
    await asyncio.sleep(0.1)
    os.kill(os.getpid(), signal.SIGINT)
    async with asyncio.timeout(10):
        await listening
    assert lost == [0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handed back
