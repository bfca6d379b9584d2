"""Read state: unread counts on every open stream of a student, across nodes."""

import asyncio

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import (
    ServiceProcess,
    grade_body,
    open_stream,
    publish,
    token_for,
    unique,
)


async def test_unread_counts_follow_publishes_and_reads_on_every_node(
    client: httpx.AsyncClient,
    publisher: ServiceProcess,
    node_a: ServiceProcess,
    node_b: ServiceProcess,
) -> None:
    student = unique()
    token = token_for(student)
    auth = {"Authorization": f"Bearer {token}"}
    async with (
        open_stream(client, node_a.url, student, token) as on_a,
        open_stream(client, node_b.url, student, token) as on_b,
    ):
        for _ in range(3):
            await publish(client, publisher.url, grade_body(student))
        for stream in (on_a, on_b):
            await stream.events(3)
            await stream.assert_quiet(0.5)  # reads the stats that follow the last grade
            assert stream.unread == [0, 1, 2, 3]  # 0 on opening, then one per grade

        read = await client.post(f"{node_a.url}/notifications/2/read", headers=auth)
        assert read.json() == {"unread": 2}
        again = await client.post(f"{node_b.url}/notifications/2/read", headers=auth)
        assert again.json() == {"unread": 2}  # already read: no change
        everything = await client.post(f"{node_b.url}/notifications/read-all", headers=auth)
        assert everything.json() == {"unread": 0}
        for stream in (on_a, on_b):
            await stream.assert_quiet(1)
            assert stream.unread[-3:] == [2, 2, 0]

    missed = await client.get(f"{node_a.url}/notifications/missed/{student}", headers=auth)
    assert missed.json()["unread"] == 0
    unknown = await client.post(f"{node_a.url}/notifications/99/read", headers=auth)
    assert unknown.status_code == 404
    stranger = {"Authorization": f"Bearer {token_for(unique())}"}
    assert (
        await client.post(f"{node_a.url}/notifications/1/read", headers=stranger)
    ).status_code == 404
    assert (await client.post(f"{node_a.url}/notifications/read-all")).status_code == 401


async def test_the_unread_count_stays_exact_under_concurrent_publishes_and_reads(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_a: ServiceProcess, db: AsyncEngine
) -> None:
    student = unique()
    auth = {"Authorization": f"Bearer {token_for(student)}"}
    await publish(client, publisher.url, grade_body(student))

    async def reads() -> None:
        for seq in range(1, 30):
            await client.post(f"{node_a.url}/notifications/{seq}/read", headers=auth)
            await client.post(f"{node_a.url}/notifications/read-all", headers=auth)

    await asyncio.gather(
        reads(), *(publish(client, publisher.url, grade_body(student)) for _ in range(40))
    )
    query = text("""
        SELECT s.unread, (SELECT count(*) FROM notifications n WHERE n.student_id = s.student_id
                          AND n.tenant_id = s.tenant_id AND n.read_at IS NULL) AS counted
        FROM student_sequences s WHERE s.student_id = :s
    """)
    async with db.connect() as connection:
        row = (await connection.execute(query, {"s": student})).one()
    assert row.unread == row.counted
    final = await client.get(f"{node_a.url}/notifications/missed/{student}", headers=auth)
    assert final.json()["unread"] == row.counted
