"""A stream node driven over real HTTP, fed by a real publisher through RabbitMQ."""

import asyncio
import contextlib

import httpx
import jwt

from services.core.broker import node_queue_name, routing_key, shard_of
from services.core.tenancy import Student
from tests.support import (
    JWT_SECRET,
    ServiceProcess,
    eventually,
    grade_body,
    open_stream,
    publish,
    queue_bindings,
    token_for,
    unique,
)

SHARDS = 64


async def test_a_live_grade_arrives_as_one_frame(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    student = unique()
    async with open_stream(client, node_a.url, student, token_for(student)) as stream:
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        body = grade_body(student, grade="B+", teacherComment="line one\nline two")
        result = await publish(client, publisher.url, body)

        event = await stream.next_event()
        assert stream.retry == 500  # RECONNECT_MILLISECONDS, sent before anything else
        assert event.event == "grade"
        assert event.id == result["notifications"][0]["id"]
        assert event.json() == {
            "id": event.id,
            "studentId": student,
            "assignmentId": body["assignmentId"],
            "grade": "B+",
            "teacherComment": "line one\nline two",
            "courseId": None,
            "assignmentTitle": None,
            "publishedAt": result["notifications"][0]["publishedAt"],
        }


async def test_keepalive_comments_while_idle(
    client: httpx.AsyncClient, node_a: ServiceProcess
) -> None:
    student = unique()
    async with open_stream(client, node_a.url, student, token_for(student)) as stream:
        await stream.assert_quiet(2.5)  # HEARTBEAT_SECONDS is 1 in the tests
        assert stream.comments.count("keepalive") >= 2


async def test_reconnect_replays_missed_grades_then_live_ones(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    student = unique()
    token = token_for(student)
    async with open_stream(client, node_a.url, student, token) as stream:
        first = await publish(client, publisher.url, grade_body(student))
        assert (await stream.next_event()).id == first["notifications"][0]["id"]
    missed = [await publish(client, publisher.url, grade_body(student)) for _ in range(3)]
    missed_ids = [m["notifications"][0]["id"] for m in missed]

    last_id = first["notifications"][0]["id"]
    async with open_stream(client, node_a.url, student, token, **{"Last-Event-ID": last_id}) as s:
        assert [e.id for e in await s.events(3)] == missed_ids
        live = await publish(client, publisher.url, grade_body(student))
        assert (await s.next_event()).id == live["notifications"][0]["id"]
        await s.assert_quiet(1.5)


async def test_last_event_id_in_the_query_string(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_b: ServiceProcess
) -> None:
    student = unique()
    published = [await publish(client, publisher.url, grade_body(student)) for _ in range(2)]
    ids = [p["notifications"][0]["id"] for p in published]
    query = f"?token={token_for(student)}&lastEventId={ids[0]}"
    async with open_stream(client, node_b.url, student, None, query) as stream:
        assert [e.id for e in await stream.events(1)] == ids[1:]


async def test_no_gap_and_no_duplicate_when_grades_are_published_during_a_replay(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    """More than a page of replay (500), with more grades committed while it is sent."""
    student = unique()
    await asyncio.gather(*(publish(client, publisher.url, grade_body(student)) for _ in range(600)))

    async def publish_more() -> None:
        for _ in range(20):
            await publish(client, publisher.url, grade_body(student))

    headers = {"Last-Event-ID": "0"}
    async with open_stream(client, node_a.url, student, token_for(student), **headers) as stream:
        publishing = asyncio.create_task(publish_more())
        received = [event.id for event in await stream.events(620, seconds=30)]
        await publishing
        await stream.assert_quiet(1.5)
    assert received == [str(seq) for seq in range(1, 621)]


async def test_a_batch_reaches_each_student_once(
    client: httpx.AsyncClient,
    publisher: ServiceProcess,
    node_a: ServiceProcess,
    node_b: ServiceProcess,
) -> None:
    students = [unique() for _ in range(40)]
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(
                open_stream(client, (node_a, node_b)[i % 2].url, student, token_for(student))
            )
            for i, student in enumerate(students)
        ]
        result = await publish(client, publisher.url, grade_body(students + students[:10]))
        assert result["count"] == 40  # a repeated id yields one notification
        ids = {n["studentId"]: n["id"] for n in result["notifications"]}
        assert set(ids) == set(students)

        events = await asyncio.gather(*(stream.next_event() for stream in streams))
        assert [(e.json()["studentId"], e.id) for e in events] == [(s, ids[s]) for s in students]
        await asyncio.gather(*(stream.assert_quiet(1.5) for stream in streams))


def students_in_distinct_shards(count: int) -> list[str]:
    chosen: dict[int, str] = {}
    while len(chosen) < count:
        student = unique()
        chosen.setdefault(shard_of(Student("default", student), SHARDS), student)
    return list(chosen.values())


async def test_each_node_receives_only_its_own_students_shards(
    client: httpx.AsyncClient,
    publisher: ServiceProcess,
    node_a: ServiceProcess,
    node_b: ServiceProcess,
    amqp_vhost: str,
) -> None:
    on_a, on_b = students_in_distinct_shards(2)
    key_a, key_b = (routing_key(shard_of(Student("default", s), SHARDS)) for s in (on_a, on_b))
    async with (
        open_stream(client, node_a.url, on_a, token_for(on_a)) as stream_a,
        open_stream(client, node_b.url, on_b, token_for(on_b)) as stream_b,
    ):
        bindings_a = queue_bindings(amqp_vhost, node_queue_name("node-a"))
        bindings_b = queue_bindings(amqp_vhost, node_queue_name("node-b"))
        assert key_a in bindings_a and key_b not in bindings_a
        assert key_b in bindings_b and key_a not in bindings_b

        await publish(client, publisher.url, grade_body([on_a, on_b]))
        assert (await stream_a.next_event()).json()["studentId"] == on_a
        assert (await stream_b.next_event()).json()["studentId"] == on_b
        await stream_a.assert_quiet(1.5)
        await stream_b.assert_quiet(0.1)


async def test_a_closed_connection_leaves_nothing_behind(
    client: httpx.AsyncClient, node_b: ServiceProcess, amqp_vhost: str
) -> None:
    student = unique()
    key = routing_key(shard_of(Student("default", student), SHARDS))
    queue = node_queue_name("node-b")

    async def streams_open() -> int:
        response = await client.get(f"{node_b.url}/connections")
        count: int = response.json()["students"].get(student, 0)
        return count

    async def all_closed() -> bool:
        return await streams_open() == 0

    async with open_stream(client, node_b.url, student, token_for(student)):
        assert await streams_open() == 1
        assert key in queue_bindings(amqp_vhost, queue)
    await eventually(all_closed)
    await eventually(lambda: key not in queue_bindings(amqp_vhost, queue))


async def test_connections_beyond_the_limit_get_429(
    client: httpx.AsyncClient, node_a: ServiceProcess
) -> None:
    student = unique()
    token = token_for(student)
    url = f"{node_a.url}/notifications/stream/{student}"
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):  # MAX_CONNECTIONS_PER_STUDENT
            await stack.enter_async_context(open_stream(client, node_a.url, student, token))
        refused = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["code"] == "too_many_requests"
    # Once they are closed, the student may connect again.
    async with open_stream(client, node_a.url, student, token) as stream:
        await stream.assert_quiet(0.5)


async def test_stream_refuses_missing_invalid_and_foreign_tokens(
    client: httpx.AsyncClient, node_a: ServiceProcess
) -> None:
    student = unique()
    url = f"{node_a.url}/notifications/stream/{student}"
    expired = token_for(student, ttl_seconds=-60)
    no_exp = jwt.encode({"sub": student}, JWT_SECRET, algorithm="HS256")
    wrong_key = jwt.encode({"sub": student, "exp": 2**31}, "another-secret-" * 4, algorithm="HS256")
    unsigned = jwt.encode({"sub": student, "exp": 2**31}, None, algorithm="none")
    cases = {
        None: 401,
        "not-a-jwt": 401,
        expired: 401,
        no_exp: 401,
        wrong_key: 401,
        unsigned: 401,
        token_for(unique()): 403,
    }
    for token, status in cases.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await client.get(url, headers=headers)
        assert response.status_code == status, (token, response.text)
        assert response.json()["error"]["code"] in ("unauthorized", "forbidden")
    missed = await client.get(f"{node_a.url}/notifications/missed/{student}?token={expired}")
    assert missed.status_code == 401


async def test_stream_refuses_a_malformed_student_id_with_422(
    client: httpx.AsyncClient, node_a: ServiceProcess
) -> None:
    token = token_for(unique())  # valid, for another student: the id is checked first
    for student in ("has space", "x" * 129):
        url = f"{node_a.url}/notifications/stream/{student}"
        response = await client.get(url, params={"token": token})
        assert response.status_code == 422, (student, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
        assert "student_id" in response.json()["error"]["message"]


async def test_missed_pages_through_what_was_retained(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_b: ServiceProcess
) -> None:
    student = unique()
    token = token_for(student)
    published = [await publish(client, publisher.url, grade_body(student)) for _ in range(5)]
    ids = [p["notifications"][0]["id"] for p in published]
    url = f"{node_b.url}/notifications/missed/{student}"
    headers = {"Authorization": f"Bearer {token}"}

    pages, after = [], None
    while True:
        params = {"limit": "2", **({"after": after} if after else {})}
        page = (await client.get(url, params=params, headers=headers)).json()
        pages.append([n["id"] for n in page["notifications"]])
        after = page["next"]
        if after is None:
            break
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]

    since = published[3]["notifications"][0]["publishedAt"]
    page = (await client.get(url, params={"since": since}, headers=headers)).json()
    assert [n["id"] for n in page["notifications"]] == ids[3:]
    assert page["notifications"][0]["studentId"] == student
    everything = (await client.get(url, headers=headers)).json()
    assert [n["id"] for n in everything["notifications"]] == ids

    for params in (
        {"since": since, "after": ids[0]},
        {"limit": "0"},
        {"limit": "501"},
        {"after": "x1"},
        {"since": "yesterday"},
    ):
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 422, params
        assert response.json()["error"]["code"] == "invalid_request"
