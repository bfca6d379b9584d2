"""Replay after retention purged part of what the client asked for."""

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.retention.test_worker import insert_aged, run_retention
from tests.support import ServiceProcess, open_stream, token_for, unique


async def test_a_replay_past_the_retention_window_is_told_with_a_reset(
    client: httpx.AsyncClient,
    node_a: ServiceProcess,
    db: AsyncEngine,
    service_env: dict[str, str],
) -> None:
    student = unique()
    await insert_aged(db, student, range(1, 6), timedelta(hours=30))
    await insert_aged(db, student, range(6, 9), timedelta(hours=1))
    async with db.begin() as connection:
        sequence = "INSERT INTO student_sequences (student_id, last_seq, unread) VALUES (:s, 8, 8)"
        await connection.execute(text(sequence), {"s": student})
    assert run_retention(service_env, "--once").returncode == 0
    token = token_for(student)

    for last_event_id, reason in (("2", "expired"), ("999", "unknown-id"), ("0", "expired")):
        headers = {"Last-Event-ID": last_event_id}
        async with open_stream(client, node_a.url, student, token, **headers) as stream:
            reset = await stream.next_event()
            assert (reset.event, reset.id, reset.json()["reason"]) == ("reset", None, reason)
            # The floor is the run's (other tests purge with shorter windows too).
            floor = datetime.fromisoformat(reset.json()["purgedBefore"])
            assert timedelta(0) < datetime.now(UTC) - floor < timedelta(hours=25)
            assert [e.id for e in await stream.events(3)] == ["6", "7", "8"]
            await stream.assert_quiet(1)
            assert stream.unread == [3]  # the five purged were unread

    # Nothing was purged after id 6: no reset.
    async with open_stream(client, node_a.url, student, token, **{"Last-Event-ID": "6"}) as s:
        assert [(e.event, e.id) for e in await s.events(2)] == [("grade", "7"), ("grade", "8")]
