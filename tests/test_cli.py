"""The gradecast command, run as users run it."""

import asyncio
import os
import subprocess
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.core.settings import Settings
from services.core.tenancy import Student
from services.core.tokens import TokenVerifier
from services.launch import GRADECAST
from tests.conftest import SERVER_URL, drop_database
from tests.support import JWT_SECRET, ROOT


def gradecast(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRADECAST_")}
    return subprocess.run(
        [*GRADECAST, *args],
        env={**environment, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_token_mints_a_token_for_the_student() -> None:
    verifier = TokenVerifier(Settings(GRADECAST_JWT_SECRET=JWT_SECRET))
    result = gradecast("token", "student-7", GRADECAST_JWT_SECRET=JWT_SECRET)
    assert result.returncode == 0, result.stderr
    assert verifier.verify(result.stdout.strip()) == Student("default", "student-7")
    school = gradecast("token", "s8", "--tenant", "school-a", GRADECAST_JWT_SECRET=JWT_SECRET)
    assert verifier.verify(school.stdout.strip()) == Student("school-a", "s8")


def test_services_refuse_to_start_without_their_secrets() -> None:
    for command, variable in (
        ("token", "GRADECAST_JWT_SECRET"),
        ("stream", "GRADECAST_JWT_SECRET"),
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


def test_keys_are_created_listed_and_revoked(database_url: str) -> None:
    created = gradecast(
        "keys", "create", "--name", "Gradebook X", "--tenant", "school-a", DATABASE_URL=database_url
    )
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split()[2]
    key = created.stdout.splitlines()[1]
    assert key.startswith("gck_") and len(key) > 40

    listed = gradecast("keys", "list", DATABASE_URL=database_url)
    row = next(line for line in listed.stdout.splitlines() if line.split()[0] == key_id)
    assert "school-a" in row and "Gradebook X" in row and key[:12] in row
    assert key not in listed.stdout  # never the key itself

    assert gradecast("keys", "revoke", key_id, DATABASE_URL=database_url).returncode == 0
    again = gradecast("keys", "revoke", key_id, DATABASE_URL=database_url)
    assert again.returncode == 1 and "no active key" in again.stdout
    bad = gradecast("keys", "create", "--name", "x", "--tenant", "a/b", DATABASE_URL=database_url)
    assert bad.returncode == 2
