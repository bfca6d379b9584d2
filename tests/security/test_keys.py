"""Publisher keys from Postgres: they work at once and stop working within seconds."""

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.keys import create_key, revoke_key
from tests.conftest import Services
from tests.support import ServiceProcess, eventually, grade_body, unique


async def test_a_revoked_key_stops_working_on_every_publisher_within_seconds(
    client: httpx.AsyncClient, publisher: ServiceProcess, db: AsyncEngine, services: Services
) -> None:
    second = services.start("publisher")
    key_id, key = await create_key(db, "default", "Gradebook Y")
    headers = {"Authorization": f"Bearer {key}"}
    for service in (publisher, second):
        response = await client.post(
            f"{service.url}/grades/publish", json=grade_body(unique()), headers=headers
        )
        assert response.status_code == 201, response.text

    assert await revoke_key(db, key_id)

    async def refused_everywhere() -> bool:
        codes = [
            (
                await client.post(
                    f"{s.url}/grades/publish", json=grade_body(unique()), headers=headers
                )
            ).status_code
            for s in (publisher, second)
        ]
        return codes == [401, 401]

    await eventually(refused_everywhere, seconds=10)
