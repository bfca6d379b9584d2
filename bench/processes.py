"""The processes a benchmark runs: gradecast's services as a user runs them, and
`gradecast loadtest` against them, all against the bench's own database."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services import launch
from services.launch import GRADECAST, stop

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "bench" / "logs"
DATABASE = "gradecast_bench"
DATABASE_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}"
KEY, SECRET = "bench-key", "bench-secret-that-is-long-enough-for-hs256-0123456789"
PUBLISHER, NODE = 18000, 18001
PUBLISHER_URL, NODE_URL = f"http://127.0.0.1:{PUBLISHER}", f"http://127.0.0.1:{NODE}"
ENV = {
    "DATABASE_URL": DATABASE_URL,
    "GRADECAST_PUBLISHER_KEYS": KEY,
    "GRADECAST_JWT_SECRET": SECRET,
    "ACCESS_LOG": "false",
    "RETENTION_METRICS_PORT": "0",
    # The abuse limits would refuse the load itself.
    "PUBLISH_RATE_PER_SECOND": "1000000",
    "PUBLISH_BURST": "1000000",
    "CONNECT_RATE_PER_SECOND": "1000000",
    "CONNECT_BURST": "1000000",
    "DATABASE_POOL_SIZE": "20",
}
START_SECONDS = STOP_SECONDS = 30
# The load generator opens its streams from loopback addresses in turn: from one alone, the
# kernel's search for a free port took most of its CPU near 20,000 streams to one node.
SOURCES = [f"127.0.0.{n}" for n in range(2, 18)]


def gradecast(*args: str) -> subprocess.CompletedProcess[str]:
    """A `gradecast` command run to its end, with the bench's settings; its output."""
    return subprocess.run(
        [*GRADECAST, *args], env={**os.environ, **ENV}, cwd=ROOT, check=True,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def fresh_database() -> None:
    """The local Postgres and RabbitMQ running, and the bench's database new and migrated."""
    subprocess.run(["bash", "scripts/ensure-services.sh"], cwd=ROOT, check=True)
    subprocess.run(
        ["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DATABASE], check=True
    )
    gradecast("migrate")


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    """Until `url` answers 200; stops the bench if the process dies or takes too long."""
    state = launch.wait_ready(url, process.poll, seconds)
    if state != "ready":
        raise SystemExit(f"bench: {url} {state}; see {log}")


@contextmanager
def service(
    args: list[str],
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    under: Sequence[str] = (),  # a command to run it under, as valgrind
    start_seconds: float = START_SECONDS,
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*under, *GRADECAST, *args, "--port", str(port)],
            env={**os.environ, **ENV, **(env or {})},
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", process, log, start_seconds)
        yield process
    finally:
        stop(process, STOP_SECONDS)


def loadtest_command(options: str, streams: Sequence[str], pids: Sequence[int]) -> list[str]:
    print(f"bench: gradecast loadtest {options}", file=sys.stderr)
    urls = [arg for url in streams for arg in ("--stream", url)]
    node_pids = [arg for pid in pids for arg in ("--node-pid", str(pid))]
    return [
        *GRADECAST, "loadtest", "--publisher", PUBLISHER_URL, *urls, "--key", KEY,
        "--jwt-secret", SECRET, *node_pids, "--source-address", *SOURCES, *options.split(),
    ]  # fmt: skip


def loadtest(
    node_pid: int, options: str, streams: Sequence[str] = (NODE_URL,), pids: Sequence[int] = ()
) -> dict[str, Any]:
    """The summary of a run against the bench's stream node, or `streams` (nodes `pids`)."""
    command = loadtest_command(options, streams, pids or [node_pid])
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, check=True)
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


@contextmanager
def loadtest_running(node_pid: int, options: str) -> Iterator[list[dict[str, Any]]]:
    """A run against the bench's stream node while the body does something else; the body's
    end stops it as Ctrl-C would, and its summary is then in the yielded list."""
    command = loadtest_command(options, [NODE_URL], [node_pid])
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE)
    summaries: list[dict[str, Any]] = []
    try:
        yield summaries
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    if process.returncode != 0:
        raise SystemExit(f"bench: gradecast loadtest ended with {process.returncode}")
    summaries.append(json.loads(output))
