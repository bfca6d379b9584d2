"""A run from start to summary: workers open and hold the connections (in this process or in
child processes), the publisher publishes once they are held, the deliveries drain, and the
parent stops the workers and merges what they saw."""

import asyncio
import math
import multiprocessing
import os
import signal
import sys
import uuid
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from time import monotonic
from typing import Any

from services.loadtest.cli import Options
from services.loadtest.publishing import Publisher, recipients_for
from services.loadtest.report import (
    Progress,
    client_section,
    node_section,
    replay_section,
    summarize,
)
from services.loadtest.shared import (
    DELIVERIES,
    FAILED,
    HELD,
    RAMP_DONE,
    RECENT_P99,
    Plan,
    Received,
    Shared,
    raise_open_files_limit,
    rss_kib,
    until,
)
from services.loadtest.streams import Worker, child_main

MAX_RAMP_SECONDS = 600.0
COLLECT_SECONDS = 60.0  # for a child to send what it saw once told to stop


class Workers:
    """One worker as a task of this process, or one child process per plan."""

    def __init__(self, context: SpawnContext, shared: Shared, plans: list[Plan]) -> None:
        self.task: asyncio.Task[Received] | None = None
        self.children: list[tuple[SpawnProcess, Connection]] = []
        if len(plans) == 1:
            self.task = asyncio.create_task(Worker(plans[0], shared).run())
            return
        for plan in plans:
            results, sender = context.Pipe(duplex=False)
            child = context.Process(target=child_main, args=(plan, shared, sender), daemon=True)
            child.start()
            sender.close()  # so that a child's death reads as the end of its pipe
            self.children.append((child, results))

    def alive(self, worker: int) -> bool:
        if self.task is not None:
            return not self.task.done()
        return self.children[worker][0].is_alive()

    async def collect(self) -> tuple[list[Received], int]:
        """What every worker saw, and how many workers were lost on the way."""
        if self.task is not None:
            return [await self.task], 0
        received: list[Received] = []
        for child, results in self.children:
            await until(partial(answered, child, results), COLLECT_SECONDS)
            try:
                if results.poll():
                    received.append(await asyncio.to_thread(results.recv))
            except (EOFError, OSError):
                pass
            await asyncio.to_thread(child.join, 5)
            if child.is_alive():
                child.terminate()
        return received, len(self.children) - len(received)


def answered(child: SpawnProcess, results: Connection) -> bool:
    return results.poll() or not child.is_alive()


async def main(options: Options) -> dict[str, Any]:
    run_id = options.run_id or uuid.uuid4().hex[:8]
    replay = options.mode == "replay"  # one student, one connection, in this process
    connections, students = (1, 1) if replay else (options.connections, options.students)
    workers = 1 if replay else options.processes
    streams = options.streams[:1] if replay else options.streams
    context = multiprocessing.get_context("spawn")
    shared = Shared(context, workers, students, options.publishes)
    loop, stop, phase = asyncio.get_running_loop(), asyncio.Event(), ["ramp"]

    def interrupt() -> None:
        stop.set()
        shared.stop()
        loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C ends at once

    loop.add_signal_handler(signal.SIGINT, interrupt)
    publisher = Publisher(
        options.publisher, options.key, run_id, students, shared, options.concurrency
    )
    published = publisher.published
    started = monotonic()

    def line() -> str:
        return (
            f"{monotonic() - started:6.1f} s  {phase[0]:<7}  "
            f"held {shared.total(HELD):,.0f}/{connections:,}  failed {shared.total(FAILED):,.0f}  "
            f"publishes {published.ok:,} ok {sum(published.failures.values()):,} failed  "
            f"deliveries {shared.total(DELIVERIES):,.0f}  "
            f"p99 {shared.highest(RECENT_P99) * 1000:,.1f} ms"
        )

    def publish(mode: str, targets: list[int]) -> Any:
        recipients = recipients_for(mode, targets, options.batch_size)
        return publisher.run(recipients, options.publishes, options.rate, options.duration, stop)

    def delivered() -> bool:
        return shared.stopping or shared.total(DELIVERIES) >= published.expected

    progress = Progress(options.quiet)
    showing = asyncio.create_task(progress.run(line))
    nodes_before = {pid: rss_kib(pid) for pid in options.node_pids}
    client_before = rss_kib(os.getpid())
    plans = [
        Plan(
            worker=worker,
            workers=workers,
            run_id=run_id,
            streams=streams,
            secret=options.jwt_secret,
            connections=connections,
            students=students,
            ramp_per_second=options.ramp_per_second / workers,
            connect_timeout=options.connect_timeout,
            sources=options.sources,
            last_event_id="0" if replay else None,
        )
        for worker in range(workers)
    ]
    try:
        if replay:  # publish while the student has no connection open, then connect
            phase[0] = "publish"
            await publish("single", [0])
            published.expected = published.ok
            phase[0] = "replay"
        pool = Workers(context, shared, plans)
        ramp_seconds = connections / options.ramp_per_second + options.connect_timeout + 10
        await until(
            lambda: (
                shared.stopping
                or all(shared.get(w, RAMP_DONE) or not pool.alive(w) for w in range(workers))
            ),
            min(ramp_seconds, MAX_RAMP_SECONDS),
        )
        nodes_held = {pid: rss_kib(pid) for pid in options.node_pids}
        open_at_publish = shared.open_for(None)
        if replay:
            await until(delivered, options.duration)
        else:
            phase[0] = "publish"
            held = [student for student in range(students) if shared.open[student]]
            await publish(options.mode, held or list(range(students)))
            phase[0] = "drain"
            await until(delivered, options.drain_seconds)
        phase[0] = "stop"
        shared.stop()
        received, lost_workers = await pool.collect()
    finally:
        shared.stop()
        showing.cancel()
        loop.remove_signal_handler(signal.SIGINT)
    progress.done(line())
    summary: dict[str, Any] = {"run": run_id, "mode": options.mode}
    summary["interrupted"] = stop.is_set()
    summary["elapsed_seconds"] = round(monotonic() - started, 3)
    summary.update(summarize(received, published, connections, open_at_publish))
    if replay:
        summary["replay"] = replay_section(received, published.expected)
    summary["nodes"] = node_section(options.node_pids, streams, nodes_before, nodes_held, received)
    summary["client"] = client_section(
        received, client_before, workers, lost_workers, summary["elapsed_seconds"]
    )
    summary["options"] = options.public()
    return summary


def execute(options: Options) -> dict[str, Any]:
    """The run, on uvloop, with as many open files as this process may have."""
    limit = raise_open_files_limit()
    per_process = math.ceil(options.connections / options.processes)
    if per_process + 100 > limit and not options.quiet:
        print(
            f"gradecast loadtest: {per_process:,} connections per process but an open-file "
            f"limit of {limit:,}: raise it (ulimit -Hn) or use --processes",
            file=sys.stderr,
        )
    import uvloop

    return uvloop.run(main(options))
