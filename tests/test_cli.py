"""The gradecast command, run as users run it."""

import asyncio
import os
import subprocess
import sys
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.core.tokens import verify_token
from tests.conftest import SERVER_URL, drop_database
from tests.support import JWT_SECRET, ROOT


def gradecast(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRADECAST_")}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**environment, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_token_mints_a_token_for_the_student() -> None:
    result = gradecast("token", "student-7", GRADECAST_JWT_SECRET=JWT_SECRET)
    assert result.returncode == 0, result.stderr
    assert verify_token(result.stdout.strip(), JWT_SECRET) == "student-7"


def test_services_refuse_to_start_without_their_secrets() -> None:
    for command, variable in (
        ("token", "GRADECAST_JWT_SECRET"),
        ("stream", "GRADECAST_JWT_SECRET"),
        ("publisher", "GRADECAST_PUBLISHER_KEYS"),
    ):
        args = (command, "s") if command == "token" else (command, "--port", "1")
        result = gradecast(*args)
        assert result.returncode != 0
        assert variable in result.stderr, result.stderr


def test_a_bad_setting_stops_the_process_with_its_name() -> None:
    result = gradecast("retention", "--once", HEARTBEAT_SECONDS="soon")
    assert result.returncode != 0
    assert "HEARTBEAT_SECONDS" in result.stderr


def test_migrate_creates_a_missing_database_and_upgrades_it() -> None:
    name = f"gradecast_test_migrate_{uuid.uuid4().hex[:8]}"
    url = f"{SERVER_URL}/{name}"
    try:
        for _ in range(2):  # a second run finds everything in place
            result = gradecast("migrate", DATABASE_URL=url)
            assert result.returncode == 0, result.stderr
        tables = asyncio.run(table_names(url))
        assert {"notifications", "student_sequences", "outbox", "idempotency_keys"} <= tables
    finally:
        asyncio.run(drop_database(name))


async def table_names(url: str) -> set[str]:
    engine = create_async_engine(url)
    query = text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    async with engine.connect() as connection:
        names = set((await connection.scalars(query)).all())
    await engine.dispose()
    return names
