"""GET /notifications/ws/{studentId}: the same events, replay and auth as the SSE stream,
for clients that prefer WebSocket. Each event is one JSON message:
{"event": "grade" | "stats" | "reset", "id": "<event id>" | null, "data": {...}}.
Refusals close the socket with 4000 + the HTTP status the SSE stream would answer."""

import asyncio
import logging
import re

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.security.utils import get_authorization_scheme_param

from services.core.broker import BROKER_ERRORS
from services.core.db import DatabaseUnavailable
from services.core.tenancy import Student
from services.stream.auth import (
    TOKEN_COOKIE,
    authenticate_student,
    first_token,
    limit_connects,
    verify,
)
from services.stream.hub import NodeFull, TooManyConnections
from services.stream.subscriber import Subscriber
from services.web.errors import ApiError, InvalidRequest

logger = logging.getLogger(__name__)
router = APIRouter()

EVENT_ID = re.compile(r"[0-9]{1,18}")
TRY_AGAIN_LATER, SERVICE_RESTART = 1013, 1012  # RFC 6455 close codes
CLOSE_CODES = {
    "shutdown": (SERVICE_RESTART, "the node is stopping; reconnect"),
    "database unavailable": (TRY_AGAIN_LATER, "try again later"),
}


def messages(frames: bytes) -> list[str]:
    """SSE frames as JSON messages; comments (keepalives) and retry hints are not events."""
    out = []
    for block in frames.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in fields:
            data = orjson.loads(fields["data"])
            message = {"event": fields["event"], "id": fields.get("id"), "data": data}
            out.append(orjson.dumps(message).decode())
    return out


class WebSocketSink:
    """A stream's frames for one WebSocket, sent by its handler's task; paused while some
    wait to be sent."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.out: list[bytes] = []
        self.paused = False
        self.ended: str | None = None
        self.wakeup = asyncio.Event()
        self.sender: asyncio.Task[object] | None = None

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.paused = True
        self.wakeup.set()

    def end(self, reason: str) -> None:
        self.ended = reason
        self.wakeup.set()
        if reason in ("overflow", "disconnected") and self.sender is not None:
            self.sender.cancel()  # it may be stuck writing to a client that stopped reading

    async def send_all(self, subscriber: Subscriber) -> str:
        """Sends until the stream ends; answers why it ended."""
        self.sender = asyncio.current_task()
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                while self.out:
                    out, self.out = self.out, []
                    for message in messages(b"".join(out)):
                        await self.websocket.send_text(message)
                if self.ended:
                    return self.ended
                self.paused = False
                subscriber.resume()
        except asyncio.CancelledError:
            if self.ended not in ("overflow", "disconnected"):
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return self.ended
        finally:
            self.sender = None


async def wait_for_close(websocket: WebSocket) -> None:
    try:
        while True:
            await websocket.receive_text()  # clients have nothing to say; the close matters
    except (WebSocketDisconnect, RuntimeError):
        return


async def admit(websocket: WebSocket, student_id: str) -> tuple[Student, int | None]:
    """The student and the id to replay after, checked as the SSE stream checks them."""
    await limit_connects(websocket)
    scheme, credentials = get_authorization_scheme_param(websocket.headers.get("authorization"))
    token = first_token(
        credentials if scheme.lower() == "bearer" else None,
        websocket.query_params.get("token"),
        websocket.cookies.get(TOKEN_COOKIE),
    )
    student = await authenticate_student(student_id, await verify(websocket, token))
    after = websocket.query_params.get("lastEventId")
    if after is not None and not EVENT_ID.fullmatch(after):
        raise InvalidRequest("lastEventId: not an event id")
    return student, int(after) if after is not None else None


@router.websocket("/notifications/ws/{student_id}")
async def websocket_notifications(websocket: WebSocket, student_id: str) -> None:
    state = websocket.state
    await websocket.accept()  # first, so that a refusal can say why
    try:
        student, after = await admit(websocket, student_id)
        async with asyncio.timeout(state.settings.BROKER_TIMEOUT_SECONDS):
            subscriber = await state.hub.subscribe(student)
    except TooManyConnections:
        await websocket.close(4429, "too many streams for this student on this node")
        return
    except ApiError as error:
        await websocket.close(4000 + error.status_code, error.message[:120])
        return
    except (NodeFull, *BROKER_ERRORS):
        await websocket.close(TRY_AGAIN_LATER, "try again later")
        return
    sink = WebSocketSink(websocket)
    watcher = asyncio.ensure_future(wait_for_close(websocket))
    watcher.add_done_callback(lambda _: subscriber.close("disconnected"))
    try:
        try:
            newest, unread = await state.positions.read(student)
        except DatabaseUnavailable as error:
            logger.warning("ended a stream of %s: %s", student.label(), error)
            subscriber.close("database unavailable")
            newest = unread = 0  # not read: start() only ends the stream
        subscriber.start(sink, state.engine, after, newest, unread)
        ended = await sink.send_all(subscriber)
    finally:
        watcher.cancel()
        state.hub.unsubscribe(subscriber)
    if ended in CLOSE_CODES:
        await websocket.close(*CLOSE_CODES[ended])
    elif ended not in ("disconnected", "overflow"):
        await websocket.close()
