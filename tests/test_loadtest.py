"""`gradecast loadtest` against the real services, run as operators run it, and its SSE
parser fed a byte stream cut anywhere."""

import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.launch import GRADECAST
from services.loadtest.wire import Frame, ProtocolError, StreamParser
from tests.support import JWT_SECRET, PUBLISHER_KEYS, ROOT, ServiceProcess

# What a stream node sends: the retry hint, the unread count, grades, a keepalive, and
# (not from gradecast, but valid SSE) an event whose data spans two lines.
FRAMES = [
    b"retry: 500\n\n",
    b'event: stats\ndata: {"unread":0}\n\n',
    b'id: 1\nevent: grade\ndata: {"id":"1","assignmentId":"lt-x-1","grade":17}\n\n',
    b": keepalive\n\n",
    b'id: 2\nevent: grade\ndata: {"id":"2","assignmentId":"lt-x-2","grade":"A-"}\n\n',
    b"event: note\ndata: first\ndata: second\n\n",
]
PARSED = [
    Frame(None, None, None, 500),
    Frame(None, b"stats", b'{"unread":0}', None),
    Frame(b"1", b"grade", b'{"id":"1","assignmentId":"lt-x-1","grade":17}', None),
    Frame(b"2", b"grade", b'{"id":"2","assignmentId":"lt-x-2","grade":"A-"}', None),
    Frame(None, b"note", b"first\nsecond", None),
]
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"


def chunked(body: bytes, cuts: list[int]) -> bytes:
    """The body in chunks cut at `cuts`, as uvicorn sends it, then the last chunk."""
    edges = [0, *sorted({c % (len(body) + 1) for c in cuts}), len(body)]
    chunks = [body[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return HEAD + b"transfer-encoding: chunked\r\n\r\n" + encoded + b"0\r\n\r\n"


def fed(stream: bytes, cuts: list[int]) -> tuple[StreamParser, list[Frame]]:
    """The stream fed to a parser in pieces cut at `cuts`."""
    parser, frames = StreamParser(), []
    edges = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for start, end in zip(edges, edges[1:], strict=False):
        frames += parser.feed(stream[start:end])
    return parser, frames


@settings(max_examples=300, deadline=None)
@given(chunk_cuts=st.lists(st.integers(0, 10_000)), feed_cuts=st.lists(st.integers(0, 10_000)))
def test_the_parser_reads_a_chunked_stream_however_it_is_split(
    chunk_cuts: list[int], feed_cuts: list[int]
) -> None:
    parser, frames = fed(chunked(b"".join(FRAMES), chunk_cuts), feed_cuts)
    assert (parser.status, frames, parser.comments, parser.ended) == (200, PARSED, 1, True)


@settings(max_examples=100, deadline=None)
@given(feed_cuts=st.lists(st.integers(0, 10_000)))
def test_the_parser_reads_a_plain_body_with_crlf_lines(feed_cuts: list[int]) -> None:
    body = b"".join(FRAMES).replace(b"\n", b"\r\n")
    parser, frames = fed(HEAD + b"\r\n" + body, feed_cuts)
    assert (parser.status, frames, parser.ended) == (200, PARSED, False)  # ends with the socket
    sized = HEAD + b"content-length: %d\r\n\r\n" % len(body) + body + b"HTTP/1.1 junk"
    parser, frames = fed(sized, feed_cuts)
    assert (frames, parser.ended) == (PARSED, True)


def test_the_parser_reports_a_refusal_and_rejects_garbage() -> None:
    refusal = b'HTTP/1.1 429 Too Many Requests\r\ncontent-length: 17\r\n\r\n{"error":"slow"}\n'
    parser = StreamParser()
    assert parser.feed(refusal) == [] and parser.status == 429
    with pytest.raises(ProtocolError):
        StreamParser().feed(HEAD + b"transfer-encoding: chunked\r\n\r\nzz\r\n")
    with pytest.raises(ProtocolError):
        StreamParser().feed(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_the_load_generator_imports_no_framework_database_or_broker_client() -> None:
    check = (
        "import sys, services.loadtest.run, services.loadtest.streams;"
        "print(sorted(m for m in ('fastapi', 'starlette', 'sqlalchemy', 'aio_pika', 'pydantic')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def command(publisher: ServiceProcess, streams: list[ServiceProcess], *args: str) -> list[str]:
    urls = [arg for stream in streams for arg in ("--stream", stream.url)]
    return [
        *(*GRADECAST, "loadtest", "--publisher", publisher.url),
        *urls,
        *("--key", PUBLISHER_KEYS[0], "--jwt-secret", JWT_SECRET, "--drain-seconds", "15"),
        *("--ramp-per-second", "100"),  # gentle on the shared nodes' connection-rate budget
        *args,
    ]


def loadtest(publisher: ServiceProcess, streams: list[ServiceProcess], *args: str) -> Any:
    result = subprocess.run(
        command(publisher, streams, "--quiet", *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_ordered(latency: dict[str, float]) -> None:
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


def test_single_mode_delivers_every_grade_to_every_connection_once(
    publisher: ServiceProcess, node_a: ServiceProcess, node_b: ServiceProcess, tmp_path: Path
) -> None:
    report = tmp_path / "summary.json"
    options = ["--connections", "50", "--students", "20", "--publishes", "40", "--rate", "20"]
    summary = loadtest(publisher, [node_a, node_b], *options, "--json", str(report))
    assert json.loads(report.read_text()) == summary
    connections, deliveries = summary["connections"], summary["deliveries"]
    assert (connections["held"], connections["failed"], connections["dropped"]) == (50, 0, 0)
    assert summary["publishing"]["ok"] == summary["publishing"]["stored"] == 40
    # Students 0-9 have 3 connections (i, i+20, i+40), 10-19 have 2; each is published to twice.
    assert deliveries["expected"] == deliveries["received"] == 2 * (10 * 3 + 10 * 2)
    assert (deliveries["lost"], deliveries["duplicated"], deliveries["unexpected"]) == (0, 0, 0)
    assert_ordered(deliveries["latency_ms"])
    publishing = summary["publishing"]
    assert 0 < publishing["latency_ms"]["p50"] <= publishing["latency_ms"]["max"]
    # 40 requests at 20 a second: two seconds or so, each with its own figures.
    seconds = [second["second"] for second in publishing["timeline"]]
    assert len(seconds) >= 2 and seconds == sorted(set(seconds)) and seconds[0] == 0
    assert sum(second["requests"] for second in publishing["timeline"]) == 40
    slowest = max(second["latency_ms"]["max"] for second in publishing["timeline"])
    assert slowest == publishing["latency_ms"]["max"]
    assert 0 < time.time() - publishing["started_at"] < 100  # Unix time, when it began
    assert summary["options"]["connections"] == 50 and "jwt_secret" not in summary["options"]
    assert JWT_SECRET not in json.dumps(summary) and PUBLISHER_KEYS[0] not in json.dumps(summary)


def test_broadcast_from_two_processes_accounts_for_every_delivery(
    publisher: ServiceProcess, node_a: ServiceProcess, node_b: ServiceProcess
) -> None:
    options = ["--connections", "60", "--students", "30", "--publishes", "10", "--rate", "10"]
    summary = loadtest(
        publisher, [node_a, node_b], *options, "--mode", "broadcast", "--processes", "2"
    )
    deliveries = summary["deliveries"]
    assert summary["connections"]["held"] == 60
    client = summary["client"]
    assert (client["processes"], client["workers_lost"]) == (2, 0)
    assert "rss_per_connection_bytes" in client
    # Its own CPU: the parent's and both children's, each more than a tenth of a second
    # (a child's start alone is), so the busiest process has less than all of it.
    busiest = client["busiest_process_core_share"] * summary["elapsed_seconds"]
    assert 0 < busiest < client["cpu_seconds"] - 0.1
    assert summary["publishing"]["stored"] == 10 * 30
    assert deliveries["expected"] == deliveries["received"] == 10 * 60
    assert (deliveries["lost"], deliveries["duplicated"]) == (0, 0)
    assert_ordered(deliveries["latency_ms"])


def test_refused_streams_and_publishes_are_counted_by_their_status(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    wrong = ["--key", "not-a-publisher-key", "--jwt-secret", "not-the-secret-" * 4]
    options = ["--connections", "5", "--publishes", "3", "--rate", "10", *wrong]
    summary = loadtest(publisher, [node_a], *options)
    assert summary["connections"]["held"] == 0
    assert summary["connections"]["failures"] == {"status 401": 5}
    assert summary["publishing"]["failures"] == {"status 401": 3}
    assert summary["deliveries"]["received"] == summary["deliveries"]["expected"] == 0


def test_replay_brings_every_grade_published_while_offline(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    summary = loadtest(
        publisher, [node_a], "--mode", "replay", "--publishes", "200", "--rate", "200"
    )
    assert summary["publishing"]["ok"] == 200
    assert summary["replay"]["events"] == summary["replay"]["received"] == 200
    assert summary["replay"]["seconds_to_all"] is not None
    assert (summary["deliveries"]["lost"], summary["deliveries"]["duplicated"]) == (0, 0)


def test_node_memory_is_measured_per_connection(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    assert node_a.process is not None
    pid = node_a.process.pid
    options = ["--connections", "200", "--publishes", "5", "--node-pid", str(pid)]
    summary = loadtest(publisher, [node_a], *options)
    [node] = summary["nodes"]
    assert (node["pid"], node["stream"], node["connections"]) == (pid, node_a.url, 200)
    assert node["rss_held_kib"] > node["rss_before_kib"] > 0
    assert node["rss_per_connection_bytes"] > 0
    assert summary["deliveries"]["received"] == summary["deliveries"]["expected"] == 5


def interrupted(
    publisher: ServiceProcess, node: ServiceProcess, streams: int, *args: str
) -> tuple[Any, Counter[str]]:
    """A long run stopped with Ctrl-C once its streams are open: its summary, and the local
    addresses its streams came from, read from the kernel's table while they were open."""
    options = ["--connections", str(streams), "--publishes", "100000", "--rate", "20"]
    run = subprocess.Popen(
        command(publisher, [node], "--quiet", *options, "--duration", "60", *args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until its connections are open
            students = httpx.get(f"{node.url}/connections", timeout=5).json()["students"]
            if sum(n for s, n in students.items() if s.startswith("lt-")) == streams:
                break
            time.sleep(0.1)
        sources = sources_towards(node.port)
        time.sleep(1)
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr
    return json.loads(stdout), sources


def sources_towards(port: int | None) -> Counter[str]:
    """Local IPv4 addresses of the established connections to `port`, from /proc/net/tcp."""
    sources: Counter[str] = Counter()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            address = bytes.fromhex(local.split(":")[0])[::-1]  # stored little-endian
            sources[socket.inet_ntoa(address)] += 1
    return sources


def test_ctrl_c_stops_the_run_and_still_prints_the_summary(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    summary, _ = interrupted(publisher, node_a, 20)
    assert summary["interrupted"] is True
    assert summary["connections"]["held"] == 20
    assert 0 < summary["publishing"]["requests"] < 100_000


def test_streams_open_from_each_source_address_in_turn(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    summary, sources = interrupted(publisher, node_a, 30, "--source-address", *addresses)
    assert summary["connections"]["held"] == 30
    assert {address: sources[address] for address in addresses} == dict.fromkeys(addresses, 10)


def test_a_source_address_that_is_no_address_is_refused_by_name(
    publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    result = subprocess.run(
        command(publisher, [node_a], "--source-address", "127.0.0.2", "lab-host"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and result.stdout == ""
    assert "--source-address is not an IP address: lab-host" in result.stderr
