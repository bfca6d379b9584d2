"""Statistics, the live progress line on stderr, and the summary printed at the end."""

import asyncio
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from services.loadtest.shared import Received

if TYPE_CHECKING:
    from services.loadtest.publishing import Published


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank, on sorted values; 0 when there are none."""
    if not ordered:
        return 0.0
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def milliseconds(values: Iterable[float], fractions: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    summary = {f"p{round(f * 100)}": round(percentile(ordered, f) * 1000, 3) for f in fractions}
    summary["max"] = round(ordered[-1] * 1000, 3) if ordered else 0.0
    return summary


def per_second(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


class Progress:
    """One line rewritten in place about twice a second on a terminal; a plain line every
    few seconds otherwise (a log file, CI)."""

    def __init__(self, quiet: bool, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.quiet = quiet
        self.tty = self.out.isatty()
        self.interval = 0.5 if self.tty else 5.0
        self.shown = False

    async def run(self, line: Callable[[], str]) -> None:
        if self.quiet:
            return
        while True:
            await asyncio.sleep(self.interval)
            self.show(line())

    def show(self, text: str) -> None:
        self.out.write(f"\r{text}\x1b[K" if self.tty else f"{text}\n")
        self.out.flush()
        self.shown = True

    def done(self, line: str) -> None:
        if not self.quiet:
            self.show(line)
            if self.tty:
                self.out.write("\n")


def timeline(published: "Published") -> list[dict[str, Any]]:
    """Answered requests by the second they were sent in, from the first request's: how
    latency moved through the run (a purge, a restart), which the whole run's figures hide."""
    seconds: defaultdict[int, list[float]] = defaultdict(list)
    for sent, latency in zip(published.sent_at, published.latencies, strict=True):
        seconds[int(sent - published.first_start)].append(latency)
    return [
        {"second": second, "requests": len(sent), "latency_ms": milliseconds(sent, (0.5, 0.99))}
        for second, sent in sorted(seconds.items())
    ]


def wall_clock(moment: float) -> float:
    """A time.monotonic() reading as Unix time, for other tools to line up with."""
    return round(time.time() - (time.monotonic() - moment), 3)


def rss_growth(before: int | None, held: int | None, connections: int) -> float | None:
    """Bytes of resident memory per connection, from two VmRSS readings in KiB."""
    if before is None or held is None or connections <= 0:
        return None
    return round((held - before) * 1024 / connections, 1)


def summarize(
    received: list[Received], published: "Published", connections: int, open_at_publish: int
) -> dict[str, Any]:
    """The connections, publishing and deliveries sections, from every worker's counts."""
    failures: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    for worker in received:
        failures.update(worker.failures)
        drops.update(worker.drops)
    held = sum(worker.held for worker in received)
    ramp_started = min((w.ramp_started for w in received if w.ramp_started), default=0.0)
    last_held = max((w.last_held for w in received), default=0.0)
    ramp_seconds = max(0.0, last_held - ramp_started) if held else 0.0
    answered = published.answered
    total = sum(sum(worker.per_request) for worker in received)
    matched = sum(
        sum(count for number, count in enumerate(worker.per_request) if answered[number])
        for worker in received
    )
    last_receipt = max((w.last_receipt for w in received), default=0.0)
    window = published.last_answer - published.first_start if published.first_start else 0.0
    delivery_window = max(last_receipt, published.last_answer) - published.first_start
    return {
        "connections": {
            "requested": connections,
            "held": held,
            "failed": sum(failures.values()),
            "failures": dict(sorted(failures.items())),
            "dropped": sum(drops.values()),
            "drops": dict(sorted(drops.items())),
            "open_at_publish": open_at_publish,
            "ramp_seconds": round(ramp_seconds, 3),
            "connects_per_second": per_second(held, ramp_seconds),
            "connect_ms": milliseconds(
                (s for w in received for s in w.connect_seconds), (0.5, 0.99)
            ),
        },
        "publishing": {
            "requests": published.requests,
            "ok": published.ok,
            "failed": sum(published.failures.values()),
            "failures": dict(sorted(published.failures.items())),
            "window_seconds": round(window, 3),
            "requests_per_second": per_second(published.ok, window),
            "latency_ms": milliseconds(published.latencies, (0.5, 0.99)),
            "stored": published.stored,
            "stored_per_second": per_second(published.stored, window),
            "started_at": wall_clock(published.first_start) if published.first_start else None,
            "timeline": timeline(published),
        },
        "deliveries": {
            "expected": published.expected,
            "received": matched,
            "lost": max(0, published.expected - matched),
            "duplicated": sum(worker.duplicates for worker in received),
            "unexpected": total - matched,  # of requests that got no 201
            "foreign": sum(worker.foreign for worker in received),
            "per_second": per_second(matched, delivery_window if published.first_start else 0),
            "latency_ms": milliseconds(
                (s for w in received for s in w.latencies), (0.5, 0.9, 0.99)
            ),
        },
    }


def replay_section(received: list[Received], events: int) -> dict[str, Any]:
    """The replay mode's measure: from the connection's start to the last of the events."""
    count = sum(sum(worker.per_request) for worker in received)
    worker = received[0] if received and count else None
    seconds = worker.last_receipt - worker.ramp_started if worker else 0.0
    first = worker.first_receipt - worker.ramp_started if worker else 0.0
    return {
        "events": events,
        "received": count,
        "seconds_to_all": round(seconds, 3) if worker and count >= events else None,
        "first_event_ms": round(first * 1000, 3),
        "events_per_second": per_second(count, seconds),
    }


def node_section(
    pids: Sequence[int],
    streams: Sequence[str],
    before: dict[int, int | None],
    held: dict[int, int | None],
    received: list[Received],
) -> list[dict[str, Any]]:
    """Each node's RSS before the connections and with all held. Given one pid per stream
    URL, in order, each is divided by the connections open on its URL then; else by all."""
    by_stream = [sum(worker.open_by_stream[i] for worker in received) for i in range(len(streams))]
    per_node = len(pids) == len(streams)
    nodes = []
    for number, pid in enumerate(pids):
        connections = by_stream[number] if per_node else sum(by_stream)
        nodes.append(
            {
                "pid": pid,
                "stream": streams[number] if per_node else None,
                "connections": connections,
                "rss_before_kib": before.get(pid),
                "rss_held_kib": held.get(pid),
                "rss_per_connection_bytes": rss_growth(before.get(pid), held.get(pid), connections),
            }
        )
    return nodes


def client_section(
    received: list[Received],
    before: int | None,
    processes: int,
    lost: int,
    elapsed: float,
) -> dict[str, Any]:
    """This tool's own cost: its workers' RSS growth from their start to all held, and the
    CPU of its processes. A process near a whole core (busiest_process_core_share near 1)
    adds its own waiting to the latencies it reports: give it more --processes."""
    held = sum(worker.held for worker in received)
    if processes == 1:
        grown = rss_growth(before, received[0].rss_held_kib if received else None, held)
    else:
        starts = [w.rss_before_kib for w in received if w.rss_before_kib is not None]
        ends = [w.rss_held_kib for w in received if w.rss_held_kib is not None]
        complete = len(starts) == len(ends) == len(received) > 0
        grown = rss_growth(sum(starts), sum(ends), held) if complete else None
    cpu = [time.process_time(), *(w.cpu_seconds for w in received if w.cpu_seconds is not None)]
    return {
        "processes": processes,
        "workers_lost": lost,
        "rss_per_connection_bytes": grown,
        "cpu_seconds": round(sum(cpu), 2),
        "busiest_process_core_share": round(max(cpu) / elapsed, 2) if elapsed > 0 else None,
    }
