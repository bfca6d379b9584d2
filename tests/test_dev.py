"""`gradecast dev`, the quick start's first command, run end to end."""

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from services.launch import GRADECAST
from tests.support import ROOT, EventReader, free_port, grade_body

BANNER_SECONDS = 60


def read_banner(log: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + BANNER_SECONDS
    while time.monotonic() < deadline:
        text = log.read_text()
        if "Publish a grade" in text:
            return text
        assert process.poll() is None, text
        time.sleep(0.2)
    raise AssertionError(f"no banner:\n{log.read_text()[-3000:]}")


async def stream_a_grade(ports: list[int], key: str, token: str) -> None:
    """On each stream node, with the key and token the banner printed."""
    async with httpx.AsyncClient(timeout=30) as client:
        for stream_port in ports[1:]:
            url = f"http://127.0.0.1:{stream_port}/notifications/stream/student-1"
            headers = {"Authorization": f"Bearer {token}"}
            async with client.stream("GET", url, headers=headers) as response:
                assert response.status_code == 200
                reader = EventReader(response)
                published = await client.post(
                    f"http://127.0.0.1:{ports[0]}/grades/publish",
                    json=grade_body("student-1"),
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert published.status_code == 201, published.text
                event = await reader.next_event()
                assert event.id == published.json()["notifications"][0]["id"]
                await reader.close()


def start_dev(service_env: dict[str, str], log: Path, ports: list[int]) -> subprocess.Popen[bytes]:
    """`gradecast dev` on `ports`, with the secrets it generates itself."""
    env = {k: v for k, v in {**os.environ, **service_env}.items() if not k.startswith("GRADECAST_")}
    publisher, *streams = map(str, ports)
    with log.open("wb") as output:
        return subprocess.Popen(
            [*GRADECAST, "dev", "--port", publisher, "--stream-ports", *streams],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():  # not a process (self, net, ...)
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def test_dev_runs_everything_and_a_grade_streams_with_the_printed_credentials(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    ports = [free_port() for _ in range(3)]
    log = tmp_path / "dev.log"
    process = start_dev(service_env, log, ports)
    try:
        banner = read_banner(log, process)
        assert "generated GRADECAST_JWT_SECRET" in banner
        assert re.search(r"publisher\s+http://127\.0\.0\.1:\d+\s+ready", banner)
        assert len(re.findall(r"stream \w\s+http://\S+\s+ready", banner)) == 2
        key = re.search(r"publisher key:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        token = re.search(r"token for student-1:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]

        asyncio.run(stream_a_grade(ports, key, token))
    finally:
        process.send_signal(signal.SIGINT)
        returncode = process.wait(30)
    assert returncode == 0, log.read_text()[-3000:]
    # Every service it started has stopped: nothing listens on their ports any more.
    for port in ports:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        except httpx.TransportError:
            continue
        raise AssertionError(f"port {port} still answers")


def test_dev_stopped_while_its_services_start_stops_every_one_of_them(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """A broker that never answers keeps the services from being ready for a minute: dev is
    told to stop meanwhile, and takes its services with it rather than leave them running."""
    with socket.create_server(("127.0.0.1", 0)) as silent_broker:
        port = silent_broker.getsockname()[1]
        env = {
            **service_env,
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/",
            "BROKER_TIMEOUT_SECONDS": "60",
        }
        log = tmp_path / "dev.log"
        process = start_dev(env, log, [free_port() for _ in range(3)])
        try:
            deadline = time.monotonic() + BANNER_SECONDS
            while len(services := children_of(process.pid)) < 4:  # publisher, 2 nodes, retention
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                assert process.poll() is None, log.read_text()[-3000:]
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)  # to dev alone, as a supervisor would
            returncode = process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
    output = log.read_text()
    assert returncode == 0, output[-3000:]
    assert "gradecast dev: stopping" in output and "Publish a grade" not in output
    running = [pid for pid in services if Path(f"/proc/{pid}").exists()]
    assert not running, f"still running: {running}\n{output[-3000:]}"
