"""The retention scenario: a pass purging 1,000,000 expired notifications while grades are
published at 500 a second, to students among those whose grades are purged, so that the
purge's locks on their sequence rows contend with the publishes. The slowest publish in as
many seconds just before the purge is reported beside it: what the machine does alone."""

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from processes import (
    DATABASE,
    ENV,
    LOGS,
    PUBLISHER_URL,
    ROOT,
    STOP_SECONDS,
    loadtest_running,
)
from scenarios import Row, Scenario

from services.launch import GRADECAST, stop

ROWS, STUDENTS, LISTENERS = 1_000_000, 10_000, 1_000  # at scale 1
PURGE_SECONDS_PER_MILLION = 30.0
LATENCY_MS = 100.0
RATE = 500
EXPIRED_HOURS = 25  # RETENTION_HOURS (24) and one
# The worker's second pass, the one measured, comes this long after its first: time to seed
# the rows and get publishing under way.
INTERVAL_SECONDS = 45
PASS_LINE = re.compile(r"purged (\d+) notifications older than .* in ([\d.]+) s$")

# Student k's grade j (from 0) is row i = j * students + k: each batch the purge takes,
# oldest first, holds a grade of many students, as a day's publishing would, and each
# student's seq rises with time. Half the grades of each batch and of each student were
# read, so the purge lowers unread counts and leaves some alone.
SEED = """\
\\set ON_ERROR_STOP on
SET synchronous_commit = off;
-- The partitions of those hours, as the retention worker created them ahead at the time.
SELECT notifications_partition(hour) FROM generate_series(
    date_trunc('hour', now() - make_interval(hours => :hours, secs => :rows / 1000.0), 'UTC'),
    now() - make_interval(hours => :hours, mins => -1), interval '1 hour') AS hour;
BEGIN;
INSERT INTO notifications
    (student_id, seq, assignment_id, grade, course_id, published_at, read_at)
SELECT :'prefix' || (i % :students), i / :students + 1, 'seed-' || (i / :students + 1),
       to_jsonb(i % 101), 'bench',
       now() - make_interval(hours => :hours, secs => (:rows - i) / 1000.0),
       CASE WHEN (i / :students + i % :students) % 2 = 1
            THEN now() - make_interval(hours => :hours) END
FROM generate_series(0, :rows - 1) AS i;
INSERT INTO student_sequences (tenant_id, student_id, last_seq, unread)
SELECT tenant_id, student_id, max(seq), count(*) FILTER (WHERE read_at IS NULL)
FROM notifications WHERE starts_with(student_id, :'prefix')
GROUP BY tenant_id, student_id;
COMMIT;
-- As on a table that has been in use: statistics and a visibility map.
VACUUM ANALYZE notifications;
VACUUM ANALYZE student_sequences;
SELECT count(*) AS stray, count(*) > 0 AS unpartitioned FROM notifications_default
WHERE starts_with(student_id, :'prefix') \\gset
\\if :unpartitioned
    \\warn 'bench: ' :stray ' seeded rows are in the default partition'
\\endif
"""


def seed(prefix: str, rows: int, students: int) -> None:
    started = time.monotonic()
    variables = {"prefix": prefix, "rows": rows, "students": students, "hours": EXPIRED_HOURS}
    command = ["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", DATABASE]
    command += [arg for name, value in variables.items() for arg in ("-v", f"{name}={value}")]
    subprocess.run(command, input=SEED, text=True, check=True, stdout=subprocess.DEVNULL)
    took = time.monotonic() - started
    print(f"bench: seeded {rows:,} expired notifications in {took:.1f} s", file=sys.stderr)


def published() -> float:
    """Notifications the publisher has stored since it started."""
    metrics = httpx.get(f"{PUBLISHER_URL}/metrics", timeout=5).text
    found = re.search(r"^gradecast_notifications_published_total (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def await_publishing(before: float, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while published() <= before:
        if time.monotonic() > deadline:
            raise SystemExit("bench: the load generator published nothing")
        time.sleep(0.2)


@dataclass(frozen=True)
class Pass:
    started: float  # Unix time
    ended: float
    purged: int


@contextmanager
def worker() -> Iterator[Path]:
    """The retention worker as operators run it, a long-running process: a pass at its
    start, then one every INTERVAL_SECONDS. Its log, one JSON object a line. (A process
    started for the one pass, `--once`, spends a second of the cores on its imports: with
    nothing to purge, publishes meanwhile took up to 120 ms.)"""
    log = LOGS / "retention.log"
    env = {**os.environ, **ENV, "LOG_FORMAT": "json", "RETENTION_METRICS_PORT": "0"}
    env["RETENTION_INTERVAL_SECONDS"] = str(INTERVAL_SECONDS)
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*GRADECAST, "retention"], env=env, cwd=ROOT, stdout=output, stderr=output
        )
    try:
        yield log
    finally:
        stop(process, STOP_SECONDS)


def await_pass(log: Path, number: int, seconds: float) -> Pass:
    """The worker's `number`th pass (from 1), once it has ended: when it started and ended,
    as the worker times it, and what it purged."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        passes = []
        for line in log.read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if found := PASS_LINE.search(entry.get("message", "")):
                ended = datetime.fromisoformat(entry["time"]).timestamp()
                took = float(found.group(2))
                passes.append(Pass(ended - took, ended, int(found.group(1))))
        if len(passes) >= number:
            return passes[number - 1]
        time.sleep(0.2)
    raise SystemExit(f"bench: the retention worker's pass {number} did not end; see {log}")


def slowest_between(publishing: dict[str, Any], start: float, end: float) -> float:
    """The slowest publish sent in a second of the run that overlaps [start, end] (Unix
    time): the run's own maximum would count its first requests too, which meet a cold pool
    and plans before any purge."""
    began = publishing["started_at"]
    overlapping = [
        second["latency_ms"]["max"]
        for second in publishing["timeline"]
        if began + second["second"] < end and began + second["second"] + 1 > start
    ]
    return max(overlapping, default=float("inf"))


def scenario(scale: float) -> Scenario:
    students = min(STUDENTS, max(1, int(ROWS * scale)))
    rows = students * max(1, int(ROWS * scale) // students)
    listeners = min(students, max(1, int(LISTENERS * scale)))
    target = PURGE_SECONDS_PER_MILLION * rows / 1_000_000

    def retention(pid: int) -> list[Row]:
        with worker() as log:
            await_pass(log, 1, 60)  # at its start: nothing has expired yet
            return purge_while_publishing(pid, log)

    def purge_while_publishing(pid: int, log: Path) -> list[Row]:
        run = uuid.uuid4().hex[:8]
        seed(f"lt-{run}-", rows, students)
        before = published()
        # No cap but the load generator's own: Ctrl-C (the end of the block) stops it.
        options = f"--mode single --rate {RATE} --connections {listeners} --run-id {run} "
        options += "--publishes 300000 --duration 600"
        with loadtest_running(pid, options) as summaries:
            await_publishing(before)
            purge = await_pass(log, 2, INTERVAL_SECONDS + 60)
            time.sleep(1)
        publishing = summaries[0]["publishing"]
        if purge.started < publishing["started_at"] + 2:
            raise SystemExit("bench: the purge began before publishing was under way")
        seconds, purged = purge.ended - purge.started, purge.purged
        slowest = slowest_between(publishing, purge.started, purge.ended)
        # The machine's own: as many seconds just before the purge.
        earlier = slowest_between(publishing, 2 * purge.started - purge.ended, purge.started - 1)
        whole, rate = publishing["latency_ms"]["max"], publishing["requests_per_second"]
        return [
            (f"purge of {rows:,} expired (s)", f"<= {target:g}", round(seconds, 1),
             seconds <= target),
            ("rows purged", f"all of {rows:,}", purged, purged == rows),
            (f"slowest publish meanwhile (ms), at {RATE}/s offered", f"<= {LATENCY_MS:g}",
             round(slowest, 1), slowest <= LATENCY_MS),
            # Before the purge, the first requests: a cold start, not the purge's doing.
            ("slowest publish of the whole run (ms)", "-", round(whole, 1), True),
            ("slowest publish as long before the purge (ms)", "-", round(earlier, 1), True),
            # The offered rate, give or take the first and last requests' timing.
            ("publishes per second meanwhile", f">= {RATE * 0.98:g}", round(rate),
             rate >= RATE * 0.98),
        ]  # fmt: skip

    return retention
