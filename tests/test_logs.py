"""Tokens in query strings are redacted before a log line is written; LOG_FORMAT=json
writes JSON lines that name the request they were written for."""

import json
import logging
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from services.logs import AddRequestId, JsonFormatter, RedactTokens, request_id
from services.web.request_id import RequestIdMiddleware
from tests.conftest import Services
from tests.support import ServiceProcess, eventually, open_stream, token_for, unique


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("test", logging.INFO, __file__, 1, msg, args, None)


def test_token_values_are_redacted() -> None:
    entry = record(
        '%s - "%s %s" %d',
        "127.0.0.1",
        "GET",
        "/notifications/stream/s1?token=eyJ.abc.def&lastEventId=4",
        200,
    )
    assert RedactTokens().filter(entry) is True
    assert entry.args == (
        "127.0.0.1",
        "GET",
        "/notifications/stream/s1?token=[redacted]&lastEventId=4",
        200,
    )


def test_token_after_another_parameter_is_redacted() -> None:
    entry = record("%s", "/stream/s1?lastEventId=4&token=secret.value&x=1")
    RedactTokens().filter(entry)
    assert entry.getMessage() == "/stream/s1?lastEventId=4&token=[redacted]&x=1"


def test_other_parameters_are_kept() -> None:
    entry = record("%s", "/stream/s1?lastEventId=4&tokens=1&mytoken=2")
    RedactTokens().filter(entry)
    assert entry.getMessage() == "/stream/s1?lastEventId=4&tokens=1&mytoken=2"


def json_line(entry: logging.LogRecord) -> dict[str, Any]:
    """What the JSON handler of configure_logging writes for a record: filters, then format."""
    for log_filter in (RedactTokens(), AddRequestId()):
        log_filter.filter(entry)
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_json_lines_have_the_fields() -> None:
    entry = json_line(record("relayed %d messages", 3))
    assert entry.keys() == {"time", "level", "logger", "message"}
    assert entry["message"] == "relayed 3 messages"
    assert (entry["level"], entry["logger"]) == ("INFO", "test")
    time = datetime.fromisoformat(entry["time"])
    assert time.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - time) < timedelta(minutes=1)


def test_json_lines_render_the_exception_as_error() -> None:
    try:
        raise ValueError("bad frame")
    except ValueError:
        entry = record("dead-lettered %s", "m1")
        entry.exc_info = sys.exc_info()
    parsed = json_line(entry)
    assert parsed["message"] == "dead-lettered m1"
    assert parsed["error"].startswith("Traceback")
    assert "ValueError: bad frame" in parsed["error"]


def test_json_lines_carry_the_request_id_when_one_is_set() -> None:
    assert "request_id" not in json_line(record("outside a request"))
    token = request_id.set("req-42")
    try:
        assert json_line(record("inside a request"))["request_id"] == "req-42"
    finally:
        request_id.reset(token)


def test_tokens_are_redacted_in_json_lines_too() -> None:
    url = "/notifications/stream/s1?token=eyJ.abc.def&lastEventId=4"
    entry = json_line(record('%s - "%s %s" %d', "127.0.0.1", "GET", url, 200))
    assert "eyJ" not in json.dumps(entry)
    assert "?token=[redacted]&lastEventId=4" in entry["message"]


async def test_the_request_id_is_accepted_or_made_and_sent_back() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        body = (request_id.get() or "").encode()
        await send({"type": "http.response.body", "body": body})

    transport = httpx.ASGITransport(app=RequestIdMiddleware(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        given = await client.get("/", headers={"X-Request-ID": "gradebook.run-7_a"})
        assert given.headers["X-Request-ID"] == given.text == "gradebook.run-7_a"
        for bad in ("x" * 65, "has space", "semi;colon", ""):
            made = await client.get("/", headers={"X-Request-ID": bad})
            # 64 random bits of the process, then a count: accepted again if sent back
            assert re.fullmatch(r"[0-9a-f]{17,64}", made.headers["X-Request-ID"]), bad
            assert made.text == made.headers["X-Request-ID"]
        first, second = await client.get("/"), await client.get("/")
        assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    assert request_id.get() is None


async def test_a_publisher_logs_json_lines_with_the_request_id(
    services: Services, client: httpx.AsyncClient
) -> None:
    publisher = services.start("publisher", LOG_FORMAT="json")
    url = f"{publisher.url}/health?token=eyJ.secret.value"
    response = await client.get(url, headers={"X-Request-ID": "test-123"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "test-123"

    def lines_of_the_request() -> list[dict[str, Any]]:
        written = publisher.log.read_text()
        written = written[: written.rfind("\n") + 1]  # whole lines only
        lines = [json.loads(line) for line in written.splitlines()]  # every one is JSON
        return [line for line in lines if line.get("request_id") == "test-123"]

    await eventually(lines_of_the_request)
    # uvicorn writes its access line from within the request, so it carries the id.
    [access] = lines_of_the_request()
    assert access["logger"] == "uvicorn.access"
    assert '"GET /health?token=[redacted] HTTP/1.1" 200' in access["message"]
    assert "eyJ.secret.value" not in publisher.log.read_text()


async def test_a_stream_response_names_its_request_id(
    node_a: ServiceProcess, client: httpx.AsyncClient
) -> None:
    student = unique()
    headers = {"X-Request-ID": "stream-test-1"}
    async with open_stream(client, node_a.url, student, token_for(student), **headers) as stream:
        assert stream.response.headers["X-Request-ID"] == "stream-test-1"
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
