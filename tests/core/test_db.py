"""The engine every process opens, against the run's Postgres."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.db import create_engine, open_pool
from services.core.settings import Settings
from tests.support import free_port

# The arrays the publish statement answers with (services.publisher.store.PUBLISH).
ARRAYS = text("""
    SELECT array_agg(n.student_id), array_agg(n.seq), array_agg(n.published_at)
    FROM notifications AS n WHERE false
""")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(DATABASE_URL=database_url, DATABASE_POOL_SIZE=3), "test")
    yield engine
    await engine.dispose()


async def test_open_pool_opens_the_connections_before_they_are_needed(engine: AsyncEngine) -> None:
    assert engine.pool.checkedin() == 0
    await open_pool(engine, 3)
    assert engine.pool.checkedin() == 3


async def test_a_new_connection_meets_the_publish_arrays_without_a_catalog_query(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        queries: list[str] = []
        driver.add_query_logger(lambda record: queries.append(record.query))
        await connection.execute(ARRAYS)
    # The statement runs prepared, which the logger does not see; a catalog query it would.
    assert queries == ["BEGIN;", "ROLLBACK;"]


async def test_open_pool_without_postgres_warns_and_leaves_them_for_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"
    engine = create_engine(Settings(DATABASE_URL=url), "test")
    await open_pool(engine, 2)
    assert "database unavailable at start, connecting on demand" in caplog.text
    assert engine.pool.checkedin() == 0
    await engine.dispose()
