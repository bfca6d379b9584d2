"""The async engine every process opens, and the one way to run a transaction on it."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.core.settings import Settings

logger = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """Postgres cannot be reached; the transaction was rolled back, nothing was written."""


def create_engine(settings: Settings, application_name: str) -> AsyncEngine:
    """Tagged with application_name so Postgres shows who holds a connection."""
    engine = create_async_engine(
        settings.DATABASE_URL,
        pool_size=settings.DATABASE_POOL_SIZE,
        # A fixed size: connections beyond the pool would be opened and closed again with
        # every burst, and opening one costs more than waiting for a pooled one.
        max_overflow=0,
        pool_timeout=settings.DATABASE_TIMEOUT_SECONDS,
        connect_args={
            "timeout": settings.DATABASE_TIMEOUT_SECONDS,
            # No JIT: it compiles a large publish's plan on every run (for 10,000 students,
            # from 20 ms to 0.9 s depending on the machine), longer than it saves.
            # UTC: Postgres writes times into JSON (the broker messages it builds) in the
            # session's time zone, so live frames would not read as replays do.
            "server_settings": {
                "application_name": application_name,
                "jit": "off",
                "timezone": "UTC",
            },
        },
    )
    event.listen(engine.sync_engine, "connect", load_array_codecs)
    event.listen(engine.sync_engine, "checkout", replace_closed)
    return engine


# asyncpg builds the codec of an array type (text[] aside) the first time a connection
# meets it, with a catalog query: 3 to 4 ms added to the first publish on each pooled
# connection, the first seconds after a start. The arrays our statements answer with are
# met once, as the connection opens.
ARRAYS = "SELECT CAST(NULL AS varchar[]), CAST(NULL AS bigint[]), CAST(NULL AS timestamptz[])"


def load_array_codecs(dbapi_connection: Any, record: Any) -> None:
    dbapi_connection.run_async(lambda connection: connection.prepare(ARRAYS))


def replace_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A restarted Postgres leaves closed connections in the pool: each is replaced when
    checked out. asyncpg knows one is closed once the server hung up, so this costs no round
    trip, where a ping (pool_pre_ping) costs three (BEGIN, the ping, ROLLBACK) on every
    checkout. A connection cut without a word fails its next query instead, which
    discards the pool's connections."""
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("closed by the server")


@asynccontextmanager
async def transaction(
    engine: AsyncEngine, *, one_statement: bool = False
) -> AsyncIterator[AsyncConnection]:
    """Commits on success, rolls back on error; a lost database becomes DatabaseUnavailable.
    With `one_statement` the block runs a single statement, atomic by itself, so it runs
    without BEGIN and COMMIT: two round trips fewer."""
    try:
        if one_statement:
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                yield connection
        else:
            async with engine.begin() as connection:
                yield connection
    except (OSError, TimeoutError, PoolTimeout) as error:  # connecting failed
        raise DatabaseUnavailable(str(error)) from error
    except DBAPIError as error:  # the connection broke mid-transaction
        if error.connection_invalidated or isinstance(error.orig, OSError | TimeoutError):
            raise DatabaseUnavailable(str(error)) from error
        raise


async def open_pool(engine: AsyncEngine, size: int) -> None:
    """Opens `size` of the pool's connections at a web service's start, so that its first
    requests do not wait for them (5 to 10 ms each, with their codecs): a restarted node
    meets its clients' reconnects at once. Without Postgres, a warning, and the service
    starts all the same: they open on demand later."""
    try:
        async with AsyncExitStack() as stack:
            for _ in range(size):
                await stack.enter_async_context(transaction(engine, one_statement=True))
    except DatabaseUnavailable as error:
        logger.warning("database unavailable at start, connecting on demand: %s", error)


def sqlstate(error: DBAPIError) -> str | None:
    """The Postgres error code (SQLSTATE) behind a driver error, if it has one."""
    return getattr(error.orig, "sqlstate", None)


def database_name(url: str) -> str:
    name = make_url(url).database
    if not name:
        raise SystemExit(f"gradecast: DATABASE_URL names no database: {url}")
    return name
