"""Two schools with a student of the same id: nothing crosses from one to the other."""

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.keys import create_key
from tests.support import (
    ServiceProcess,
    grade_body,
    open_stream,
    token_for,
    unique,
)


async def test_a_school_never_reaches_another_schools_student_of_the_same_id(
    client: httpx.AsyncClient,
    publisher: ServiceProcess,
    node_a: ServiceProcess,
    db: AsyncEngine,
) -> None:
    school_a, school_b, student = unique("school"), unique("school"), unique()
    _, key_a = await create_key(db, school_a, "Gradebook A")
    token_a = token_for(student, tenant_id=school_a)
    token_b = token_for(student, tenant_id=school_b)
    url = f"{publisher.url}/grades/publish"

    async with (
        open_stream(client, node_a.url, student, token_a) as stream_a,
        open_stream(client, node_a.url, student, token_b) as stream_b,
    ):
        response = await client.post(
            url, json=grade_body(student), headers={"Authorization": f"Bearer {key_a}"}
        )
        assert response.status_code == 201
        assert (await stream_a.next_event()).id == "1"
        await stream_b.assert_quiet(1.5)

    # Not through the missed endpoint, nor with a hand-made id.
    missed = f"{node_a.url}/notifications/missed/{student}"
    for params in ({}, {"after": "0"}, {"since": "2000-01-01T00:00:00Z"}):
        page = await client.get(
            missed, params=params, headers={"Authorization": f"Bearer {token_b}"}
        )
        assert page.json() == {"notifications": [], "next": None, "unread": 0}
    headers = {"Last-Event-ID": "0"}
    async with open_stream(client, node_a.url, student, token_b, **headers) as replay_b:
        await replay_b.assert_quiet(1)
    async with open_stream(client, node_a.url, student, token_a, **headers) as replay_a:
        assert (await replay_a.next_event()).id == "1"

    async with db.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT tenant_id, published_by FROM notifications WHERE student_id = :s"),
                {"s": student},
            )
        ).one()
    assert row.tenant_id == school_a and row.published_by.startswith("key:")
