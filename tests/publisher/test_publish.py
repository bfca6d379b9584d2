"""The publish API over real HTTP, against the run's Postgres and RabbitMQ."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import (
    PUBLISHER_KEYS,
    ServiceProcess,
    eventually,
    free_port,
    grade_body,
    publish,
    row_counts,
    unique,
)

KEY = {"Authorization": f"Bearer {PUBLISHER_KEYS[0]}"}
JSON = {**KEY, "Content-Type": "application/json"}


async def test_a_publish_is_committed_before_the_answer(
    client: httpx.AsyncClient, publisher: ServiceProcess, db: AsyncEngine
) -> None:
    student = unique()
    body = grade_body(student, grade=91.5, courseId="math-101", assignmentTitle="Quiz 3")
    result = await publish(client, publisher.url, body)
    assert result["count"] == 1
    [notification] = result["notifications"]
    assert notification["studentId"] == student and notification["id"] == "1"
    assert notification["publishedAt"].endswith("Z")

    async with db.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT * FROM notifications WHERE student_id = :s"), {"s": student}
            )
        ).one()
    assert (row.seq, row.grade, row.course_id, row.assignment_title) == (
        1,
        91.5,
        "math-101",
        "Quiz 3",
    )


async def test_each_students_ids_increase_without_gaps(
    client: httpx.AsyncClient, publisher: ServiceProcess
) -> None:
    student = unique()
    results = await asyncio.gather(
        *(publish(client, publisher.url, grade_body(student)) for _ in range(30))
    )
    ids = sorted(int(r["notifications"][0]["id"]) for r in results)
    assert ids == list(range(1, 31))


async def test_outbox_is_emptied_once_the_broker_confirms(
    client: httpx.AsyncClient, publisher: ServiceProcess, db: AsyncEngine
) -> None:
    await publish(client, publisher.url, grade_body([unique() for _ in range(200)]))

    async def outbox_empty() -> bool:
        async with db.connect() as connection:
            return await connection.scalar(text("SELECT count(*) FROM outbox")) == 0

    await eventually(outbox_empty)


TOO_MANY = [f"s{i}" for i in range(10_001)]
MALFORMED: list[tuple[str, dict[str, Any] | bytes, int, str]] = [
    ("not json", b"{'studentId': 1", 422, "body"),
    ("an array", b"[1, 2]", 422, "body"),
    ("invalid utf-8", b'{"studentId": "\xff\xfe", "assignmentId": "a", "grade": 1}', 422, ""),
    ("NaN grade", b'{"studentId": "s", "assignmentId": "a", "grade": NaN}', 422, "grade"),
    ("huge grade", b'{"studentId": "s", "assignmentId": "a", "grade": 1e999}', 422, "grade"),
    ("unsafe integer grade", {"studentId": "s", "assignmentId": "a", "grade": 2**53}, 422, "grade"),
    ("empty grade", {"studentId": "s", "assignmentId": "a", "grade": ""}, 422, "grade"),
    ("NUL in grade", {"studentId": "s", "assignmentId": "a", "grade": "A\u0000"}, 422, "grade"),
    ("newline in grade", {"studentId": "s", "assignmentId": "a", "grade": "A\n"}, 422, "grade"),
    (
        "NUL in comment",
        {"studentId": "s", "assignmentId": "a", "grade": 1, "teacherComment": "ok\u0000"},
        422,
        "teacherComment",
    ),
    (
        "escape in title",
        {"studentId": "s", "assignmentId": "a", "grade": 1, "assignmentTitle": "\u001b[31m"},
        422,
        "assignmentTitle",
    ),
    ("no recipient", {"assignmentId": "a", "grade": 1}, 422, "studentId"),
    (
        "both recipients",
        {"studentId": "s", "studentIds": ["t"], "assignmentId": "a", "grade": 1},
        422,
        "studentId",
    ),
    ("empty studentIds", {"studentIds": [], "assignmentId": "a", "grade": 1}, 422, "studentIds"),
    (
        "10,001 studentIds",
        {"studentIds": TOO_MANY, "assignmentId": "a", "grade": 1},
        422,
        "studentIds",
    ),
    ("no assignmentId", {"studentId": "s", "grade": 1}, 422, "assignmentId"),
    ("no grade", {"studentId": "s", "assignmentId": "a"}, 422, "grade"),
    ("boolean grade", {"studentId": "s", "assignmentId": "a", "grade": True}, 422, "grade"),
    ("object grade", {"studentId": "s", "assignmentId": "a", "grade": {"x": 1}}, 422, "grade"),
    ("long grade", {"studentId": "s", "assignmentId": "a", "grade": "A" * 33}, 422, "grade"),
    ("space in id", {"studentId": "a b", "assignmentId": "a", "grade": 1}, 422, "studentId"),
    ("newline in id", {"studentId": "a\n", "assignmentId": "a", "grade": 1}, 422, "studentId"),
    ("long id", {"studentId": "s" * 129, "assignmentId": "a", "grade": 1}, 422, "studentId"),
    (
        "bad id in list",
        {"studentIds": ["ok", "é"], "assignmentId": "a", "grade": 1},
        422,
        "studentIds.1",
    ),
    (
        "newline in an id in list",  # the publish statement takes the ids a line each
        {"studentIds": ["ok", "b\n"], "assignmentId": "a", "grade": 1},
        422,
        "studentIds.1",
    ),
    (
        "bad courseId",
        {"studentId": "s", "assignmentId": "a", "grade": 1, "courseId": "#"},
        422,
        "courseId",
    ),
    (
        "long comment",
        {"studentId": "s", "assignmentId": "a", "grade": 1, "teacherComment": "x" * 2001},
        422,
        "teacherComment",
    ),
    (
        "long title",
        {"studentId": "s", "assignmentId": "a", "grade": 1, "assignmentTitle": "x" * 201},
        422,
        "assignmentTitle",
    ),
    (
        "unknown field",
        {"studentId": "s", "assignmentId": "a", "grade": 1, "student_id": "s"},
        422,
        "student_id",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "field"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
async def test_malformed_publishes_get_422_naming_the_field_and_write_nothing(
    client: httpx.AsyncClient,
    publisher: ServiceProcess,
    db: AsyncEngine,
    case: str,
    body: dict[str, Any] | bytes,
    status: int,
    field: str,
) -> None:
    before = await row_counts(db)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(f"{publisher.url}/grades/publish", content=content, headers=JSON)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["message"], error
    assert await row_counts(db) == before


async def test_content_type_and_size_are_checked_before_the_schema(
    client: httpx.AsyncClient, publisher: ServiceProcess, db: AsyncEngine
) -> None:
    before = await row_counts(db)
    url = f"{publisher.url}/grades/publish"
    body = json.dumps(grade_body(unique())).encode()

    for content_type in ("text/plain", None, "application/x-www-form-urlencoded"):
        headers = {**KEY, **({"Content-Type": content_type} if content_type else {})}
        response = await client.post(url, content=body, headers=headers)
        assert response.status_code == 415, content_type
        assert response.json()["error"]["code"] == "unsupported_media_type"
    ok_type = {**KEY, "Content-Type": "application/json; charset=utf-8"}
    assert (await client.post(url, content=b"{}", headers=ok_type)).status_code == 422

    huge = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    declared = await client.post(url, content=huge, headers=JSON)
    assert declared.status_code == 413

    async def chunks() -> Any:  # no Content-Length: the size is counted as it arrives
        for _ in range(20):
            yield b" " * 65536
        yield b"{}"

    chunked = await client.post(url, content=chunks(), headers=JSON)
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "payload_too_large"
    assert await row_counts(db) == before


async def test_publishing_needs_a_valid_key(
    client: httpx.AsyncClient, publisher: ServiceProcess, db: AsyncEngine
) -> None:
    before = await row_counts(db)
    url = f"{publisher.url}/grades/publish"
    body = grade_body(unique())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}):
        response = await client.post(url, json=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
    # Both configured keys work.
    second = {"Authorization": f"Bearer {PUBLISHER_KEYS[1]}"}
    assert (await client.post(url, json=body, headers=second)).status_code == 201
    assert (await row_counts(db))["notifications"] == before["notifications"] + 1


async def test_an_idempotent_retry_returns_the_first_answer(
    client: httpx.AsyncClient, publisher: ServiceProcess, db: AsyncEngine
) -> None:
    url = f"{publisher.url}/grades/publish"
    body = grade_body([unique(), unique()], teacherComment="ok")
    key = {"Idempotency-Key": unique("retry")}
    first = await client.post(url, json=body, headers={**KEY, **key})
    assert first.status_code == 201
    before = await row_counts(db)

    # The same JSON with another key order and spacing is the same body.
    reordered = json.dumps(dict(reversed(body.items())), indent=2).encode()
    again = await client.post(url, content=reordered, headers={**JSON, **key})
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await row_counts(db) == before

    changed = await client.post(url, json={**body, "grade": 18}, headers={**KEY, **key})
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "conflict"
    assert await row_counts(db) == before

    # Keys are scoped to the publisher key that used them.
    other = {"Authorization": f"Bearer {PUBLISHER_KEYS[1]}", **key}
    assert (await client.post(url, json=body, headers=other)).json() != first.json()


async def test_concurrent_retries_create_one_notification(
    client: httpx.AsyncClient, publisher: ServiceProcess
) -> None:
    url = f"{publisher.url}/grades/publish"
    student = unique()
    headers = {**KEY, "Idempotency-Key": unique("retry")}
    responses = await asyncio.gather(
        *(
            client.post(url, json=grade_body(student, assignmentId="a1"), headers=headers)
            for _ in range(8)
        )
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.text for r in responses}) == 1
    assert responses[0].json()["notifications"][0]["id"] == "1"


async def test_an_invalid_idempotency_key_is_refused(
    client: httpx.AsyncClient, publisher: ServiceProcess
) -> None:
    headers = {**KEY, "Idempotency-Key": "x" * 256}
    response = await client.post(
        f"{publisher.url}/grades/publish", json=grade_body("s"), headers=headers
    )
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["error"]["message"]


@pytest.fixture
def publisher_without_database(service_env: dict[str, str], logs: Path) -> Iterator[ServiceProcess]:
    """A publisher whose Postgres does not answer (nothing listens on its port)."""
    env = {
        **service_env,
        "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x",
    }
    port = free_port()
    service = ServiceProcess(["publisher", "--port", str(port)], env, logs / "no-db.log", port)
    service.start(wait_ready=False)
    yield service
    service.stop()


async def test_database_down_answers_503_with_retry_after(
    client: httpx.AsyncClient, publisher_without_database: ServiceProcess
) -> None:
    service = publisher_without_database
    for _ in range(100):  # wait until it listens; /ready stays 503 without a database
        try:
            ready = await client.get(f"{service.url}/ready")
            break
        except httpx.TransportError:
            await asyncio.sleep(0.2)
    assert ready.status_code == 503
    assert "database" in ready.json()["error"]["message"]
    assert "database unavailable at start" in service.log.read_text()
    assert (await client.get(f"{service.url}/health")).status_code == 200

    response = await client.post(f"{service.url}/grades/publish", json=grade_body("s"), headers=KEY)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["error"]["code"] == "unavailable"
