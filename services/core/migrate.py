"""`gradecast migrate`: create the database when it is missing, then upgrade to head."""

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import make_url, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine

from services.core.db import database_name, sqlstate

logger = logging.getLogger(__name__)

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"
DUPLICATE_DATABASE = "42P04"


def alembic_config(database_url: str) -> Config:
    config = Config(ALEMBIC_INI)
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


async def create_database(database_url: str) -> bool:
    """True when it had to be created."""
    name = database_name(database_url)
    server = make_url(database_url).set(database="postgres")
    engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            exists = "SELECT 1 FROM pg_database WHERE datname = :name"
            if await connection.scalar(text(exists), {"name": name}):
                return False
            quoted = engine.dialect.identifier_preparer.quote(name)
            try:
                await connection.execute(text(f"CREATE DATABASE {quoted}"))
            except ProgrammingError as error:
                if sqlstate(error) == DUPLICATE_DATABASE:
                    return False  # another process created it meanwhile
                raise
            return True
    finally:
        await engine.dispose()


def migrate(database_url: str) -> None:
    if asyncio.run(create_database(database_url)):
        logger.info("created database %s", database_name(database_url))
    command.upgrade(alembic_config(database_url), "head")
