"""Starts gradecast as a user runs it (one publisher, one stream node, against the local
Postgres and RabbitMQ), runs the scenarios of the performance targets with
`gradecast loadtest`, and appends the figures, dated and with the machine, to
bench/RESULTS.md.

    .venv/bin/python bench/run.py                 # every scenario
    .venv/bin/python bench/run.py idle replay     # some of them
    .venv/bin/python bench/run.py --scale 0.1     # a quick, smaller run
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
DATABASE = "gradecast_bench"
DATABASE_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}"
KEY, SECRET = "bench-key", "bench-secret-that-is-long-enough-for-hs256-0123456789"
PUBLISHER, NODE = 18000, 18001
GRADECAST = [sys.executable, "-m", "services.cli"]
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


@contextmanager
def service(args: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*GRADECAST, *args, "--port", str(port)],
            env={**os.environ, **ENV},
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(150):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"bench: {args[0]} did not start; see {log}")
        yield process
    finally:
        process.terminate()
        process.wait(30)


def loadtest(node_pid: int, options: str) -> dict[str, Any]:
    command = [
        *GRADECAST, "loadtest", "--publisher", f"http://127.0.0.1:{PUBLISHER}",
        "--stream", f"http://127.0.0.1:{NODE}", "--key", KEY, "--jwt-secret", SECRET,
        "--node-pid", str(node_pid), *options.split(),
    ]  # fmt: skip
    print(f"bench: gradecast loadtest {options}", file=sys.stderr)
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, check=True)
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


Row = tuple[str, str, Any, bool]  # figure, target, measured, met


def scenarios(scale: float) -> dict[str, Callable[[int], list[Row]]]:
    """Each runs against the stream node of that pid."""
    n = max(1, int(10_000 * scale))  # connected students
    idle_n = max(1, int(19_900 * scale))

    def idle(pid: int) -> list[Row]:
        r = loadtest(pid, f"--connections {idle_n} --ramp-per-second 4000 --publishes 1")
        held, rate = r["connections"]["held"], r["connections"]["connects_per_second"]
        kib = r["nodes"][0]["rss_per_connection_bytes"] / 1024
        return [
            ("idle connections held", f"all of {idle_n}", held, held == idle_n),
            ("connections per second", ">= 2000", round(rate), rate >= 2000),
            ("RSS per connection (KiB)", "<= 8", round(kib, 1), kib <= 8),
        ]

    def one_batch(pid: int) -> list[Row]:
        r = loadtest(pid, f"--connections {n} --mode broadcast --publishes 1")
        last = r["deliveries"]["latency_ms"]["max"] / 1000
        return [(f"one batch to {n}: last delivery (s)", "<= 0.5", round(last, 3), last <= 0.5)]

    def broadcast(pid: int) -> list[Row]:
        options = f"--connections {n} --mode broadcast --publishes 30 --concurrency 1 --rate 1000"
        rate = loadtest(pid, options)["deliveries"]["per_second"]
        return [("30 broadcasts: deliveries per second", ">= 80000", round(rate), rate >= 80_000)]

    def steady(pid: int) -> list[Row]:
        options = f"--connections {n} --mode single --rate 1000 --publishes 20000 --duration 20"
        r = loadtest(pid, options)
        p99, lost = r["deliveries"]["latency_ms"]["p99"], r["deliveries"]["lost"]
        return [
            ("1000 grades/s: p99 publish to receipt (ms)", "<= 20", round(p99, 1), p99 <= 20),
            ("1000 grades/s: lost", "0", lost, lost == 0),
        ]

    def batched(pid: int) -> list[Row]:
        options = (
            # Batches go to connected students, so all of them are connected.
            f"--connections {n} --mode batch --batch-size 1000 --concurrency 8 "
            "--rate 1000 --publishes 10000 --duration 20"
        )
        rate = loadtest(pid, options)["publishing"]["stored_per_second"]
        return [("batches of 1000: stored and sent per second", ">= 20000", round(rate),
                 rate >= 20_000)]  # fmt: skip

    def replay(pid: int) -> list[Row]:
        seconds = loadtest(pid, "--mode replay --publishes 1000")["replay"]["seconds_to_all"]
        took = seconds * 1000 if seconds is not None else float("inf")
        return [("replay of 1000 missed (ms)", "<= 100", round(took, 1), took <= 100)]

    return {"idle": idle, "one_batch": one_batch, "broadcast": broadcast, "steady": steady,
            "batched": batched, "replay": replay}  # fmt: skip


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split(":", 1)[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return f"{os.cpu_count()} cores ({cpu}), {memory} memory, Python {platform.python_version()}"


def record(rows: list[tuple[str, str, str, Any, bool]], note: str) -> None:
    lines = [
        f"\n## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {note}\n",
        f"Machine: {machine()}. One publisher and one stream node process; the load "
        "generator shares the cores.\n",
        "| scenario | figure | target | measured | met |",
        "|---|---|---|---|---|",
        *(f"| {s} | {f} | {t} | {m} | {'yes' if ok else '**no**'} |" for s, f, t, m, ok in rows),
    ]
    with RESULTS.open("a") as results:
        results.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", nargs="*", help="default: all")
    parser.add_argument("--scale", type=float, default=1.0, help="connection counts times this")
    parser.add_argument("--note", default="gradecast bench", help="the heading of this run")
    args = parser.parse_args()
    subprocess.run(["bash", "scripts/ensure-services.sh"], cwd=ROOT, check=True)
    subprocess.run(
        ["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DATABASE], check=True
    )
    subprocess.run([*GRADECAST, "migrate"], env={**os.environ, **ENV}, cwd=ROOT, check=True)
    chosen = scenarios(args.scale)
    names = args.scenario or list(chosen)
    rows = []
    logs = ROOT / "bench" / "logs"
    logs.mkdir(exist_ok=True)
    with (
        service(["publisher"], PUBLISHER, logs / "publisher.log"),
        service(["stream", "--node-id", "bench"], NODE, logs / "stream.log") as node,
    ):
        for name in names:
            for figure, target, measured, met in chosen[name](node.pid):
                rows.append((name, figure, target, measured, met))
    record(rows, args.note + (f" (scale {args.scale})" if args.scale != 1 else ""))


if __name__ == "__main__":
    main()
