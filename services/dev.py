"""`gradecast dev`: the whole system on this machine, against the local Postgres and
RabbitMQ: migrations, a publisher, stream nodes and the retention worker, each a process
of its own with its log lines prefixed by its name."""

import asyncio
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from typing import Any

from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.tokens import mint_token
from services.launch import GRADECAST, wait_ready

READY_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10
DEMO_STUDENT = "student-1"


@dataclass
class Service:
    name: str
    args: list[str]
    port: int | None = None
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}" if self.port else ""


def development_secrets() -> dict[str, str]:
    """Secrets the environment does not give, generated for this run and said so."""
    generated = {}
    if not os.environ.get("GRADECAST_JWT_SECRET"):
        generated["GRADECAST_JWT_SECRET"] = secrets.token_urlsafe(32)
    if not os.environ.get("GRADECAST_PUBLISHER_KEYS"):
        generated["GRADECAST_PUBLISHER_KEYS"] = "dev-" + secrets.token_urlsafe(24)
    return generated


async def pump(service: Service) -> None:
    assert service.process is not None and service.process.stdout is not None
    async for line in service.process.stdout:
        sys.stdout.write(f"{service.name:>10} | {line.decode(errors='replace')}")


async def started(services: list[Service]) -> list[str]:
    """Each service's state once it is ready, or has failed to be."""
    return await asyncio.gather(*(state_once_started(service) for service in services))


async def state_once_started(service: Service) -> str:
    if service.port is None:
        return "running"
    process = service.process
    assert process is not None
    url = f"{service.url}/ready"
    return await asyncio.to_thread(
        wait_ready, url, lambda: process.returncode, READY_TIMEOUT_SECONDS
    )


def banner(services: list[Service], states: list[str], key: str, token: str) -> str:
    rows = [f"  {'service':<12}{'url':<26}state"]
    rows += [f"  {s.name:<12}{s.url:<26}{state}" for s, state in zip(services, states, strict=True)]
    publisher, stream = services[0].url, services[1].url
    return "\n".join(
        [
            "",
            "gradecast is running. Ctrl-C stops everything.",
            *rows,
            "",
            f"  publisher key:          {key}",
            f"  token for {DEMO_STUDENT}: {token}",
            f"  API docs:               {publisher}/docs and {stream}/docs",
            "",
            "Watch a student's stream (leave it open):",
            f"  curl -N -H 'Authorization: Bearer {token}' \\",
            f"    {stream}/notifications/stream/{DEMO_STUDENT}",
            "",
            "Publish a grade (in another terminal):",
            f"  curl -X POST {publisher}/grades/publish -H 'Authorization: Bearer {key}' \\",
            "    -H 'Content-Type: application/json' \\",
            f'    -d \'{{"studentId": "{DEMO_STUDENT}", "assignmentId": "essay-1", '
            '"grade": "A-", "teacherComment": "Well argued."}\'',
            "",
        ]
    )


def plan(publisher_port: int, stream_ports: list[int]) -> list[Service]:
    services = [
        Service(
            "publisher", [*GRADECAST, "publisher", "--port", str(publisher_port)], publisher_port
        )
    ]
    for index, port in enumerate(stream_ports):
        node = f"dev-{chr(ord('a') + index)}"
        args = [*GRADECAST, "stream", "--port", str(port), "--node-id", node]
        services.append(Service(f"stream {node[-1]}", args, port))
    services.append(Service("retention", [*GRADECAST, "retention"]))
    return services


async def run_services(publisher_port: int, stream_ports: list[int]) -> int:
    generated = development_secrets()
    for name in generated:
        print(f"gradecast dev: generated {name} for this run (set it to keep one)")
    os.environ.update(generated)  # the services below inherit them
    settings = Settings()
    await asyncio.to_thread(migrate, settings.DATABASE_URL)

    # Ctrl-C or SIGTERM from here on, even while the services start, stops all of them.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.create_task(stop.wait())
    services = plan(publisher_port, stream_ports)
    pumps: list[asyncio.Task[None]] = []
    try:
        for service in services:
            service.process = await asyncio.create_subprocess_exec(
                *service.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            pumps.append(asyncio.create_task(pump(service)))
        starting = asyncio.create_task(started(services))
        first: list[asyncio.Future[Any]] = [starting, stopping]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            print("gradecast dev: stopping", flush=True)
            starting.cancel()
            return 0
        key = settings.GRADECAST_PUBLISHER_KEYS[0].get_secret_value()
        assert settings.GRADECAST_JWT_SECRET is not None
        secret = settings.GRADECAST_JWT_SECRET.get_secret_value()
        token = mint_token(DEMO_STUDENT, secret, 24 * 3600)
        print(banner(services, starting.result(), key, token), flush=True)

        exits = [asyncio.create_task(s.process.wait()) for s in services if s.process]
        await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        failed = [s.name for s in services if s.process and s.process.returncode not in (None, 0)]
        if failed:
            print(f"gradecast dev: {', '.join(failed)} stopped; stopping the rest", flush=True)
        return 1 if failed else 0
    finally:
        await stop_all(services)
        stopping.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def stop_all(services: list[Service]) -> None:
    running = [s.process for s in services if s.process and s.process.returncode is None]
    for process in running:
        process.terminate()
    try:
        async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
            await asyncio.gather(*(p.wait() for p in running))
    except TimeoutError:
        for process in running:
            if process.returncode is None:
                process.kill()


def run(publisher_port: int, stream_ports: list[int]) -> int:
    return asyncio.run(run_services(publisher_port, stream_ports))
