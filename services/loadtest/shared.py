"""What passes between the parent and the connection workers, which may be other
processes: a worker's Plan and what it Received, and shared memory (the run's phase, each
publish request's start time, the connections open per student, each worker's live
counters). Each slot has one writer: the parent writes the phase and start times; a worker
its own counters and the counts of its own students (workers share out students)."""

import asyncio
import ctypes
import math
import resource
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from time import monotonic

RUNNING, STOPPING = 0, 1  # control[0]
# A worker's counters, at stats[worker * FIELDS + field].
HELD, FAILED, DELIVERIES, RECENT_P99, RAMP_DONE, FIELDS = range(6)


@dataclass
class Plan:
    """One worker's share: connection i is student i % students, on stream URL i % len(streams),
    and belongs to the worker its student does."""

    worker: int
    workers: int
    run_id: str
    streams: list[str]
    secret: str
    connections: int
    students: int
    ramp_per_second: float  # this worker's share of the rate
    connect_timeout: float  # seconds from connecting to the first frame
    sources: tuple[str, ...] = ()  # local addresses to connect from, in turn
    last_event_id: str | None = None

    def indexes(self) -> list[int]:
        share = self.worker, self.workers
        return [i for i in range(self.connections) if (i % self.students) % share[1] == share[0]]


@dataclass
class Received:
    """What a worker saw. Times are time.monotonic(), the same clock in every process."""

    open_by_stream: list[int]  # connections open per stream URL once the ramp ended
    per_request: "array[int]"  # grades received, by request number
    held: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # "status 429", "connect", ...
    # Held, then ended before the run did: "sent back" (nothing but `retry:` hints: come
    # back later), "ended by the node" (after serving the stream), or "broken".
    drops: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0  # an event id not above the last one on its connection
    foreign: int = 0  # grade frames of no request of this run
    connect_seconds: "array[float]" = field(default_factory=lambda: array("d"))
    latencies: "array[float]" = field(default_factory=lambda: array("d"))
    ramp_started: float = 0.0
    last_held: float = 0.0
    first_receipt: float = 0.0
    last_receipt: float = 0.0
    rss_before_kib: int | None = None
    rss_held_kib: int | None = None
    cpu_seconds: float | None = None  # a child process's, at its end


class Shared:
    def __init__(self, context: SpawnContext, workers: int, students: int, publishes: int):
        self.workers = workers
        self.control = context.RawArray(ctypes.c_int, 1)
        self.starts = context.RawArray(ctypes.c_double, publishes + 1)  # by request number
        self.open = context.RawArray(ctypes.c_int, students)  # held and open, per student
        self.stats = context.RawArray(ctypes.c_double, workers * FIELDS)

    @property
    def stopping(self) -> bool:
        return bool(self.control[0] == STOPPING)

    def stop(self) -> None:
        self.control[0] = STOPPING

    def set(self, worker: int, field: int, value: float) -> None:
        self.stats[worker * FIELDS + field] = value

    def get(self, worker: int, field: int) -> float:
        return float(self.stats[worker * FIELDS + field])

    def total(self, field: int) -> float:
        return sum(self.get(worker, field) for worker in range(self.workers))

    def highest(self, field: int) -> float:
        return max(self.get(worker, field) for worker in range(self.workers))

    def open_for(self, students: list[int] | None) -> int:
        """Connections open now for these students (None: every student)."""
        counts = memoryview(self.open).cast("B").cast("i")
        if students is None:
            return sum(counts)
        return sum(counts[student] for student in students)


def rss_kib(pid: int) -> int | None:
    """A process's resident memory (VmRSS), None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def raise_open_files_limit() -> int:
    """The open-file soft limit, raised to the hard one: each connection is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


async def until(check: Callable[[], bool], seconds: float = math.inf) -> bool:
    """Polls `check` until it holds or `seconds` pass: what it reads is shared memory,
    written by other processes, which no asyncio event can signal."""
    deadline = monotonic() + seconds
    while not check():
        if monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True
