"""`gradecast loadtest`: its options. What runs is imported only when the command does, so
that registering it costs the other commands nothing."""

import argparse
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

MAX_CONNECTIONS = 100_000
MAX_SECONDS = 600.0
MAX_PUBLISHES = 1_000_000
MAX_PROCESSES = 64
MAX_IDS_PER_REQUEST = 10_000  # studentIds in one publish request
MODES = ("single", "batch", "broadcast", "replay")
RUN_ID = re.compile(r"[A-Za-z0-9]{1,32}")


@dataclass(frozen=True)
class Options:
    """What the command line asked for, after caps (its defaults are the parser's)."""

    publisher: str
    streams: list[str]
    key: str
    jwt_secret: str
    connections: int
    students: int
    ramp_per_second: float
    mode: str
    rate: float
    batch_size: int
    publishes: int
    duration: float
    drain_seconds: float
    connect_timeout: float
    concurrency: int
    node_pids: tuple[int, ...]
    processes: int
    sources: tuple[str, ...]
    json: str | None
    quiet: bool
    run_id: str | None

    def public(self) -> dict[str, object]:
        """The options, as the summary reports them: no secrets."""
        options = asdict(self)
        del options["key"], options["jwt_secret"]
        return options


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0: {text}")
    return value


NUMBERS: list[tuple[str, Callable[[str], float], float, str, str]] = [  # flag, type, default, ...
    ("--connections", positive_int, 1000, "C", f"SSE connections (at most {MAX_CONNECTIONS:,})"),
    ("--ramp-per-second", positive_float, 500.0, "N", "new connections per second"),
    ("--rate", positive_float, 100.0, "R", "publish requests per second"),
    ("--batch-size", positive_int, 100, "B", "students per request in batch mode"),
    ("--publishes", positive_int, 1000, "N", "publish requests at most"),
    ("--duration", positive_float, 30.0, "SECONDS", f"publishing time (at most {MAX_SECONDS:.0f})"),
    ("--drain-seconds", float, 5.0, "D", "how long to wait for deliveries after publishing"),
    (
        "--connect-timeout",
        positive_float,
        15.0,
        "SECONDS",
        "from connecting to a stream's first frame, at most; a node that takes connections slower "
        "than the ramp queues them",
    ),
    ("--concurrency", positive_int, 64, "K", "publish requests in flight at most"),
    ("--processes", positive_int, 1, "P", "processes holding the connections"),
]


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    loadtest = commands.add_parser(
        "loadtest",
        help="hold many streams, publish, report latency and loss",
        description="Load a running deployment: open SSE connections, publish grades through "
        "the publish API, and print a JSON summary (latency, loss, duplicates, throughput, "
        "memory). Stops by itself; Ctrl-C stops early and still prints the summary. The "
        "nodes limit connection attempts per client address (CONNECT_RATE_PER_SECOND, "
        "CONNECT_BURST) and the publisher requests per key (PUBLISH_RATE_PER_SECOND): raise "
        "them for a large run.",
    )
    add = loadtest.add_argument
    add("--publisher", required=True, metavar="URL", help="the publish API")
    add(
        "--stream",
        dest="streams",
        required=True,
        action="extend",
        nargs="+",
        metavar="URL",
        help="stream node URLs; connections are spread over them round-robin",
    )
    add("--key", help="a publisher key; default: GRADECAST_PUBLISHER_KEY")
    add("--jwt-secret", help="HS256 secret for student tokens; default: GRADECAST_JWT_SECRET")
    for flag, kind, default, metavar, text in NUMBERS:
        add(flag, type=kind, default=default, metavar=metavar, help=f"{text}; default: %(default)s")
    add("--students", type=positive_int, metavar="S", help="students; default: C")
    add(
        "--mode",
        choices=MODES,
        default="single",
        help="single: a student per request; batch: B students; broadcast: all S; replay: N "
        "grades to an offline student, then one connection replays them; default: %(default)s",
    )
    add(
        "--node-pid",
        dest="node_pids",
        type=int,
        action="extend",
        nargs="+",
        default=[],
        metavar="PID",
        help="stream node processes to measure (RSS), in --stream order",
    )
    add(
        "--run-id",
        metavar="ID",
        help="names this run's students (lt-ID-N) and grades, 1-32 letters and digits, so that "
        "their history can be prepared beforehand; default: a random one",
    )
    add(
        "--source-address",
        dest="sources",
        action="extend",
        nargs="+",
        default=[],
        metavar="ADDR",
        help="local addresses to open streams from, in turn; default: the one the system picks. "
        "One address reaches one stream URL from about 28,000 ports (ip_local_port_range), and "
        "the kernel's search for a free one slows as they fill: give several for more than a "
        "few thousand streams to one URL (on a loopback run, any of 127.0.0.0/8)",
    )
    add("--json", metavar="PATH", help="also write the summary here")
    add("--quiet", action="store_true", help="no progress line on stderr")
    loadtest.set_defaults(run=run_loadtest)


def options_from(args: argparse.Namespace) -> Options:
    key = args.key or os.environ.get("GRADECAST_PUBLISHER_KEY")
    secret = args.jwt_secret or os.environ.get("GRADECAST_JWT_SECRET")
    if not key or not secret:
        sys.exit("gradecast loadtest: give --key and --jwt-secret (or set their variables)")
    connections = min(args.connections, MAX_CONNECTIONS)
    students = min(args.students or connections, MAX_CONNECTIONS)
    if args.mode == "broadcast" and students > MAX_IDS_PER_REQUEST:
        sys.exit(f"gradecast loadtest: broadcast is to {MAX_IDS_PER_REQUEST:,} students at most")
    if args.run_id is not None and not RUN_ID.fullmatch(args.run_id):
        sys.exit("gradecast loadtest: --run-id is 1-32 letters and digits")
    for url in [args.publisher, *args.streams]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            sys.exit(f"gradecast loadtest: not an http(s) URL: {url}")
    for source in args.sources:
        try:
            ipaddress.ip_address(source)
        except ValueError:
            sys.exit(f"gradecast loadtest: --source-address is not an IP address: {source}")
    return Options(
        publisher=args.publisher,
        streams=list(args.streams),
        key=key,
        jwt_secret=secret,
        connections=connections,
        students=students,
        ramp_per_second=args.ramp_per_second,
        mode=args.mode,
        rate=args.rate,
        batch_size=min(args.batch_size, MAX_IDS_PER_REQUEST),
        publishes=min(args.publishes, MAX_PUBLISHES),
        duration=min(args.duration, MAX_SECONDS),
        drain_seconds=max(0.0, min(args.drain_seconds, MAX_SECONDS)),
        connect_timeout=min(args.connect_timeout, MAX_SECONDS),
        concurrency=args.concurrency,
        node_pids=tuple(args.node_pids),
        processes=min(args.processes, MAX_PROCESSES, students),
        sources=tuple(args.sources),
        json=args.json,
        quiet=args.quiet,
        run_id=args.run_id,
    )


def run_loadtest(args: argparse.Namespace) -> None:
    options = options_from(args)
    from services.loadtest.run import execute

    try:
        summary = execute(options)
    except KeyboardInterrupt:  # a second Ctrl-C: no summary
        sys.exit(130)
    text = json.dumps(summary, indent=2)
    print(text, flush=True)
    if options.json:
        Path(options.json).write_text(text + "\n")
