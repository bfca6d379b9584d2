"""`gradecast publish` and `gradecast listen`: the client (services/client.py) from a shell."""

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from services.client import GradecastError, PublisherClient, StreamClient
from services.core.events import NotificationPublic

PUBLISHER_URL, STREAM_URL = "http://127.0.0.1:8000", "http://127.0.0.1:8001"
INTERRUPT_AGAIN_SECONDS = 1.0


def grade_value(text: str) -> str | int | float:
    """A number when it reads as one ("17", "9.5"), else the text itself ("A-")."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    publish = commands.add_parser("publish", help="publish a grade through the publish API")
    publish.add_argument("student_ids", nargs="+", metavar="STUDENT_ID")
    publish.add_argument("--url", default=PUBLISHER_URL, help="the publisher; default: %(default)s")
    publish.add_argument("--key", help="a publisher key; default: GRADECAST_PUBLISHER_KEY")
    publish.add_argument("--assignment", required=True, help="the assignment id")
    publish.add_argument("--grade", required=True, type=grade_value, help='"A-", 17 or 9.5')
    publish.add_argument("--comment", help="the teacher's comment")
    publish.add_argument("--course", help="the course id")
    publish.add_argument("--title", help="the assignment's title")
    publish.add_argument("--idempotency-key", help="default: a new one; reuse one to retry")
    publish.set_defaults(run=run_publish)

    listen = commands.add_parser("listen", help="print a student's events until Ctrl-C")
    listen.add_argument("student_id", metavar="STUDENT_ID")
    listen.add_argument("--url", default=STREAM_URL, help="a stream node; default: %(default)s")
    listen.add_argument("--token", help="the student's token; default: GRADECAST_TOKEN")
    listen.add_argument("--last-event-id", help="replay what came after this event first")
    listen.set_defaults(run=run_listen)


def required(value: str | None, variable: str, flag: str) -> str:
    value = value or os.environ.get(variable)
    if not value:
        sys.exit(f"gradecast: give {flag} or set {variable}")
    return value


def run_publish(args: argparse.Namespace) -> None:
    key = required(args.key, "GRADECAST_PUBLISHER_KEY", "--key")
    try:
        result = asyncio.run(publish(args, key))
    except GradecastError as error:
        sys.exit(f"gradecast publish: {error}")
    print(result)


async def publish(args: argparse.Namespace, key: str) -> str:
    async with PublisherClient(args.url, key) as client:
        result = await client.publish(
            student_ids=args.student_ids,
            assignment_id=args.assignment,
            grade=args.grade,
            teacher_comment=args.comment,
            course_id=args.course,
            assignment_title=args.title,
            idempotency_key=args.idempotency_key,
        )
    return result.model_dump_json()


def run_listen(args: argparse.Namespace) -> None:
    token = required(args.token, "GRADECAST_TOKEN", "--token")
    try:
        asyncio.run(until_interrupted(listen(args, token)))
    except KeyboardInterrupt:
        pass  # Ctrl-C before the listening started
    except GradecastError as error:
        sys.exit(f"gradecast listen: {error}")


async def until_interrupted(work: Coroutine[Any, Any, None]) -> None:
    """Runs `work` until Ctrl-C (SIGINT), the way to stop listening, unless SIGINT was
    ignored when the process started. The cancel is sent again until it takes: one that
    lands while httpx connects can be lost (anyio's CancelScope, agronholm/anyio#1214)."""
    task = asyncio.create_task(work)
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        if not task.done():
            task.cancel()
            loop.call_later(INTERRUPT_AGAIN_SECONDS, interrupt)

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        await task
        return
    loop.add_signal_handler(signal.SIGINT, interrupt)  # in place of asyncio.run's
    try:
        await asyncio.wait([task])
    finally:
        loop.remove_signal_handler(signal.SIGINT)  # Python's KeyboardInterrupt again
    if not task.cancelled():
        task.result()  # its error, if it failed


async def listen(args: argparse.Namespace, token: str) -> None:
    """One JSON line per event: {"event": "grade", "data": {...}}, {"event": "reset", ...}."""
    async with StreamClient(args.url) as client:
        events = client.listen(args.student_id, token, last_event_id=args.last_event_id)
        async for event in events:
            line: dict[str, object]
            if isinstance(event, NotificationPublic):
                line = {"event": "grade", "data": event.model_dump(mode="json")}
            else:
                line = {"event": event.name, "data": event.data}
            print(json.dumps(line, ensure_ascii=False), flush=True)
