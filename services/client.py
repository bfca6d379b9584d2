"""A typed client for integrators: publish grades, and listen to a student's stream. It needs
httpx and pydantic only, and the notification model that every process shares."""

import asyncio
import codecs
import json
import logging
import math
import random
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Self
from urllib.parse import quote

import httpx
from pydantic import JsonValue

from services.core.events import NotificationPublic, PublishResult

logger = logging.getLogger(__name__)

# No answer, or one that says to come back: a retry may well succeed.
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})  # 502, 504: a proxy lost the publisher
DEFAULT_RECONNECT_SECONDS = 3.0
LINE_END = re.compile(r"\r\n|\r|\n")


class GradecastError(Exception):
    """An answer that retrying will not change; `status` is None when none came at all."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{status or 'no answer'} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    @classmethod
    def of(cls, response: httpx.Response) -> "GradecastError":
        """From the body {"error": {"code", "message"}}, or from whatever a proxy sent."""
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["code"]), str(error["message"]))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, f"http_{response.status_code}", response.text[:200])


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header, in seconds."""
    try:
        seconds = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class Client:
    """An httpx client, closed by `async with` or aclose()."""

    http: httpx.AsyncClient

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()


class PublisherClient(Client):
    """POST /grades/publish. Every call carries an Idempotency-Key, so that a retry after an
    answer was lost cannot publish twice."""

    def __init__(
        self, base_url: str, api_key: str, timeout: float = 10.0, *, retries: int = 5
    ) -> None:
        self.retries, self.backoff_seconds, self.max_backoff_seconds = max(retries, 0), 0.5, 30.0
        auth = {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=auth)

    async def publish(
        self,
        *,
        student_ids: str | Sequence[str],
        assignment_id: str,
        grade: str | int | float,
        teacher_comment: str | None = None,
        course_id: str | None = None,
        assignment_title: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """One grade for one student (a str) or for many. Retried after connection errors,
        timeouts, 429 and 503 (not before Retry-After), at most `retries` times."""
        one = isinstance(student_ids, str)
        body: dict[str, object] = {
            "studentId" if one else "studentIds": student_ids if one else list(student_ids),
            "assignmentId": assignment_id,
            "grade": grade,
        }
        optional = zip(
            ("teacherComment", "courseId", "assignmentTitle"),
            (teacher_comment, course_id, assignment_title),
            strict=True,
        )
        body.update((name, value) for name, value in optional if value is not None)
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self.http.post("/grades/publish", json=body, headers=headers)
            except TRANSIENT_ERRORS as error:
                if last:
                    raise GradecastError(None, "unreachable", repr(error)) from error
                await asyncio.sleep(self.backoff(attempt, None))
                continue
            if response.is_success:
                return PublishResult.model_validate_json(response.content)
            if last or response.status_code not in RETRYABLE_STATUSES:
                raise GradecastError.of(response)
            await asyncio.sleep(self.backoff(attempt, retry_after(response)))
        raise AssertionError("the last attempt returns or raises")

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential, with jitter, and never sooner than the server asked."""
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2.0**attempt)
        return max(retry_after or 0.0, ceiling / 2 + random.uniform(0, ceiling / 2))


@dataclass(frozen=True)
class ServerEvent:
    """An event other than a grade (`reset`, `stats`, ...): its name and its JSON data (the
    text itself when it is not JSON)."""

    name: str
    data: JsonValue


Event = NotificationPublic | ServerEvent


class EventParser:
    """text/event-stream as the HTML standard reads it, fed text as it arrives, into
    (event name, data). The last event id and the retry delay outlive a connection."""

    def __init__(self, last_id: str | None = None) -> None:
        self.last_id: str | None = last_id
        self.retry_seconds = DEFAULT_RECONNECT_SECONDS
        self.new_connection()

    def new_connection(self) -> None:
        self.id_buffer, self.name, self.data = self.last_id, "", list[str]()
        self.pending, self.after_cr = "", False

    def feed(self, text: str) -> list[tuple[str, str]]:
        if self.after_cr and text.startswith("\n"):  # the LF of a CRLF split across chunks
            text = text[1:]
        if not text:
            return []
        self.after_cr = text.endswith("\r")
        *lines, self.pending = LINE_END.split(self.pending + text)
        return [event for line in lines if (event := self.line(line)) is not None]

    def line(self, line: str) -> tuple[str, str] | None:
        if not line:  # the end of an event
            self.last_id = self.id_buffer
            name, data, self.name, self.data = self.name or "message", self.data, "", []
            return (name, "\n".join(data)) if data else None
        field, colon, value = line.partition(":")
        value = value.removeprefix(" ") if colon else ""
        if field == "event":
            self.name = value
        elif field == "data":
            self.data.append(value)
        elif field == "id" and "\0" not in value:
            self.id_buffer = value or None
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_seconds = int(value) / 1000
        return None  # a comment (no field name), or a field nobody knows


class StreamClient(Client):
    """GET /notifications/stream/{studentId}, reconnecting with Last-Event-ID until the
    caller stops iterating (contextlib.aclosing() closes the stream at once)."""

    def __init__(self, base_url: str, timeout: float = 10.0, idle_seconds: float = 60.0) -> None:
        # Without even a keepalive for idle_seconds, the connection is dead: reconnect.
        timeouts = httpx.Timeout(timeout, read=idle_seconds)
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeouts)

    async def listen(
        self, student_id: str, token: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[Event]:
        """Grades as NotificationPublic, none twice; other events as ServerEvent. Raises
        GradecastError for an answer that a reconnect would not change (401, 403, 422)."""
        url = f"/notifications/stream/{quote(student_id, safe='')}"
        parser, seen = EventParser(last_event_id), set[str]()
        while True:
            parser.new_connection()
            headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
            if parser.last_id is not None:
                headers["Last-Event-ID"] = parser.last_id
            wait = None
            try:
                async with self.http.stream("GET", url, headers=headers) as response:
                    if response.status_code != 200:
                        await response.aread()
                        if response.status_code != 429 and response.status_code < 500:
                            raise GradecastError.of(response)
                        wait = retry_after(response)
                    else:
                        decoder = codecs.getincrementaldecoder("utf-8")("replace")
                        async for chunk in response.aiter_bytes():
                            for name, data in parser.feed(decoder.decode(chunk)):
                                if (event := typed(name, data, seen)) is not None:
                                    yield event
            except TRANSIENT_ERRORS as error:
                logger.info("the stream of %s was cut: %r", student_id, error)
            wait = parser.retry_seconds if wait is None else wait
            logger.info("reconnecting to the stream of %s in %.1f s", student_id, wait)
            await asyncio.sleep(wait)


def typed(name: str, data: str, seen: set[str]) -> Event | None:
    """A grade the first time (None after), any other event with its JSON data."""
    if name == "grade":
        notification = NotificationPublic.model_validate_json(data)
        if notification.id in seen:
            return None
        seen.add(notification.id)
        return notification
    try:
        value: JsonValue = json.loads(data)
    except ValueError:
        value = data
    return ServerEvent(name, value)
