"""The scenarios that load the bench's one publisher and one stream node through
`gradecast loadtest`. Each returns its rows: figure, target, measured, met."""

from collections.abc import Callable
from typing import Any

from processes import loadtest

Row = tuple[str, str, Any, bool]  # figure, target, measured, met
Scenario = Callable[[int], list[Row]]  # given the pid of the bench's stream node
# A browser's EventSource waits for a stream as long as TCP lets it; the load generator's
# default (15 s) would count streams queued behind a burst faster than the node takes them
# as refused.
PATIENT = "--connect-timeout 60"
RAMP = "--ramp-per-second 2000"  # the target's connection rate


def held(summary: dict[str, Any]) -> tuple[int, str]:
    """Streams held, and for the table, how many of the others failed in each way the
    load generator tells apart ("closed early": ended before the stream opened, as when a
    full listen queue gets them reset; "timeout"; "status 503"...)."""
    connections = summary["connections"]
    count, failures = connections["held"], connections["failures"]
    why = ", ".join(f"{number} {reason}" for reason, number in sorted(failures.items()))
    return count, f"{count} ({why})" if why else str(count)


# The idle scenario measures how fast a node takes streams, so it offers them faster than the
# target: offered at exactly the target's rate, the last stream's own wait would put the
# figure just under it.
OFFER = "--ramp-per-second 3000"


def scenarios(scale: float) -> dict[str, Scenario]:
    n = max(1, int(10_000 * scale))  # connected students
    idle_n = max(1, int(19_900 * scale))

    def idle(pid: int) -> list[Row]:
        r = loadtest(pid, f"--connections {idle_n} {OFFER} --publishes 1 {PATIENT}")
        (count, cell), rate = held(r), r["connections"]["connects_per_second"]
        kib = r["nodes"][0]["rss_per_connection_bytes"] / 1024
        return [
            ("idle connections held", f"all of {idle_n}", cell, count == idle_n),
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
        rate = r["publishing"]["requests_per_second"]
        return [
            ("1000 grades/s: p99 publish to receipt (ms)", "<= 20", round(p99, 1), p99 <= 20),
            ("1000 grades/s: lost", "0", lost, lost == 0),
            # Below the offered rate, the load generator's 64 requests in flight wait in the
            # publisher behind each other, and that wait is in the p99.
            ("1000 grades/s: publishes answered per second", ">= 980", round(rate),
             rate >= 980),
        ]  # fmt: skip

    def batched(pid: int) -> list[Row]:
        options = (
            # Batches go to connected students, so all of them are connected.
            f"--connections {n} --mode batch --batch-size 1000 --concurrency 8 "
            "--rate 1000 --publishes 10000 --duration 20"
        )
        r = loadtest(pid, options)
        rate, delivered = r["publishing"]["stored_per_second"], r["deliveries"]["per_second"]
        median = r["deliveries"]["latency_ms"]["p50"]
        return [
            ("batches of 1000: stored and sent per second", ">= 20000", round(rate),
             rate >= 20_000),
            # What reached the students: the node delivers on the same cores.
            ("batches of 1000: delivered per second", "-", round(delivered), True),
            ("batches of 1000: median publish to receipt (ms)", "-", round(median), True),
        ]  # fmt: skip

    def replay(pid: int) -> list[Row]:
        seconds = loadtest(pid, "--mode replay --publishes 1000")["replay"]["seconds_to_all"]
        took = seconds * 1000 if seconds is not None else float("inf")
        return [("replay of 1000 missed (ms)", "<= 100", round(took, 1), took <= 100)]

    return {"idle": idle, "one_batch": one_batch, "broadcast": broadcast, "steady": steady,
            "batched": batched, "replay": replay}  # fmt: skip
