"""Each test run gets a database and a RabbitMQ virtual host of its own, and real service
processes on free ports: one publisher and two stream nodes, shared by the run's tests
(each test uses student ids of its own)."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from services.core.migrate import migrate
from tests.proxy import TcpProxy
from tests.support import (
    JWT_SECRET,
    MANAGEMENT_AUTH,
    MANAGEMENT_URL,
    PUBLISHER_KEYS,
    ServiceProcess,
    free_port,
)

SERVER_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432"


async def drop_database(name: str) -> None:
    engine = create_async_engine(f"{SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"gradecast_test_{uuid.uuid4().hex[:12]}"
    url = f"{SERVER_URL}/{name}"
    migrate(url)
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    name = f"gradecast_test_{uuid.uuid4().hex[:12]}"
    httpx.put(f"{MANAGEMENT_URL}/vhosts/{name}", auth=MANAGEMENT_AUTH).raise_for_status()
    permissions = {"configure": ".*", "write": ".*", "read": ".*"}
    url = f"{MANAGEMENT_URL}/permissions/{name}/guest"
    httpx.put(url, json=permissions, auth=MANAGEMENT_AUTH).raise_for_status()
    yield name
    httpx.delete(f"{MANAGEMENT_URL}/vhosts/{name}", auth=MANAGEMENT_AUTH)


@pytest.fixture(scope="session")
def service_env(database_url: str, amqp_vhost: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{amqp_vhost}",
        "GRADECAST_JWT_SECRET": JWT_SECRET,
        "GRADECAST_PUBLISHER_KEYS": ",".join(PUBLISHER_KEYS),
        "HEARTBEAT_SECONDS": "1",
        "RETENTION_METRICS_PORT": "0",  # tests that want it choose a free port
        "RECONNECT_MILLISECONDS": "500",
    }


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


def run_service(args: list[str], env: dict[str, str], logs: Path) -> Iterator[ServiceProcess]:
    port = free_port()
    log = logs / f"{'-'.join(args)}.log"
    service = ServiceProcess([*args, "--port", str(port)], env, log, port).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def publisher(service_env: dict[str, str], logs: Path) -> Iterator[ServiceProcess]:
    yield from run_service(["publisher"], service_env, logs)


@pytest.fixture(scope="session")
def node_a(service_env: dict[str, str], logs: Path) -> Iterator[ServiceProcess]:
    yield from run_service(["stream", "--node-id", "node-a"], service_env, logs)


@pytest.fixture(scope="session")
def node_b(service_env: dict[str, str], logs: Path) -> Iterator[ServiceProcess]:
    yield from run_service(["stream", "--node-id", "node-b"], service_env, logs)


@pytest.fixture
def postgres_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(5432).start()
    yield proxy
    proxy.close()


@pytest.fixture
def rabbitmq_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(5672).start()
    yield proxy
    proxy.close()


class Services:
    """Service processes of one test's own, stopped when it ends."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.started = env, logs, list[ServiceProcess]()

    def start(
        self, *args: str, wait_ready: bool = True, port: int | None = None, **env: str
    ) -> ServiceProcess:
        port = port or free_port()
        log = self.logs / f"{'-'.join(args)}-{port}.log"
        service = ServiceProcess([*args, "--port", str(port)], {**self.env, **env}, log, port)
        self.started.append(service)
        return service.start(wait_ready)


@pytest.fixture
def services(service_env: dict[str, str], logs: Path) -> Iterator[Services]:
    started = Services(service_env, logs)
    yield started
    for service in started.started:
        service.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    yield engine
    await engine.dispose()
