"""Hand-made hostile requests: each gets a clear 4xx and writes nothing."""

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import PUBLISHER_KEYS, ServiceProcess, row_counts, token_for, unique

JSON = {"Authorization": f"Bearer {PUBLISHER_KEYS[0]}", "Content-Type": "application/json"}


async def test_deeply_nested_json_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, publisher: ServiceProcess, db: AsyncEngine
) -> None:
    before = await row_counts(db)
    depth = 100_000
    for nested in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        body = b'{"studentId": "s", "assignmentId": "a", "grade": ' + nested + b"}"
        response = await client.post(f"{publisher.url}/grades/publish", content=body, headers=JSON)
        assert response.status_code == 422, response.text[:200]
        assert response.json()["error"]["code"] == "invalid_request"
    assert await row_counts(db) == before


async def test_garbage_event_ids_are_refused_with_422(
    client: httpx.AsyncClient, node_a: ServiceProcess
) -> None:
    student = unique()
    url = f"{node_a.url}/notifications/stream/{student}"
    auth = {"Authorization": f"Bearer {token_for(student)}"}
    for garbage in ("abc", "-1", "1.5", "9" * 19, "1\r\nevent: forged"):
        for request in (
            client.build_request(
                "GET", url, headers={**auth, "Last-Event-ID": garbage.replace("\r\n", " ")}
            ),
            client.build_request("GET", url, params={"lastEventId": garbage}, headers=auth),
        ):
            response = await client.send(request)
            assert response.status_code == 422, (garbage, response.text)
            assert (
                "Last-Event-ID" in response.json()["error"]["message"]
                or "lastEventId" in response.json()["error"]["message"]
            )
