"""A student's live stream, what they missed, and this node's open connections."""

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated

import aio_pika
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from services.core.broker import BROKER_ERRORS, routing_key, shard_of
from services.core.events import UNREAD, CamelModel, NotificationPublic, UnreadChanged
from services.core.tenancy import Student
from services.stream.auth import (
    MAX_STUDENT_ID,
    STUDENT_ID,
    TOKEN_COOKIE,
    StudentDep,
    TokenStudent,
    authenticate_student,
    bearer,
    limit_connects,
    offered_token,
    verify,
)
from services.stream.history import mark_read, notifications_of
from services.stream.hub import NodeFull, TooManyConnections
from services.stream.sse import EventStream, RetryLater
from services.web.direct import check, resolved_by
from services.web.errors import InvalidRequest, NotFound, TooManyRequests, Unauthorized
from services.web.operators import OperatorOnly

logger = logging.getLogger(__name__)
router = APIRouter(tags=["notifications"])

EVENT_ID = r"^[0-9]{1,18}$"
MAX_EVENT_ID = 18
CONNECTION_LIMIT_RETRY_SECONDS = 30
SESSION_SECONDS = 12 * 3600  # the cookie's life; the token inside still expires on its own


class MissedPage(CamelModel):
    notifications: list[NotificationPublic]
    next: str | None  # the `after` of the following page; null at the end
    unread: int  # of all the student's retained notifications


class Unread(CamelModel):
    unread: int


class Connections(CamelModel):
    node: str
    total: int
    students: dict[str, int]


async def open_stream(request: Request) -> Response:
    """stream_notifications' resolver (services.web.direct): FastAPI's dependency solving
    cost a node more per connect than the rest of opening the stream."""
    await limit_connects(request)
    token = await offered_token(
        await bearer(request), request.query_params.get("token"), request.cookies.get(TOKEN_COOKIE)
    )
    student = await verify(request, token)
    student_id = request.path_params["student_id"]
    check("student_id", student_id, STUDENT_ID, MAX_STUDENT_ID)
    last_event_id = request.headers.get("Last-Event-ID")
    last_event_id_query = request.query_params.get("lastEventId")
    check("Last-Event-ID", last_event_id, EVENT_ID, MAX_EVENT_ID)
    check("lastEventId", last_event_id_query, EVENT_ID, MAX_EVENT_ID)
    return await stream_notifications(
        await authenticate_student(student_id, student), request, last_event_id, last_event_id_query
    )


async def stream_notifications(
    student: StudentDep,
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=EVENT_ID)] = None,
    last_event_id_query: Annotated[str | None, Query(alias="lastEventId", pattern=EVENT_ID)] = None,
) -> Response:
    """Live grades as Server-Sent Events, after replaying those since Last-Event-ID."""
    state = request.state
    after = last_event_id or last_event_id_query
    try:
        async with asyncio.timeout(state.settings.BROKER_TIMEOUT_SECONDS):
            subscriber = await state.hub.subscribe(student)
    except TooManyConnections:
        # Deliberate and lasting: an extra tab should stop trying, so not a 200.
        raise TooManyRequests(
            f"at most {state.settings.MAX_CONNECTIONS_PER_STUDENT} streams per student on one node",
            CONNECTION_LIMIT_RETRY_SECONDS,
        ) from None
    except NodeFull:
        logger.warning("node full: told a client to come back later")
        return RetryLater(state.reconnect)
    except BROKER_ERRORS as error:
        logger.warning("could not bind the shard of %s: %r", student.label(), error)
        return RetryLater(state.reconnect)
    return EventStream(
        subscriber,
        engine=state.engine,
        positions=state.positions,
        release=state.hub.unsubscribe,
        after=int(after) if after is not None else None,
        reconnect=state.reconnect,
    )


router.add_api_route(
    "/notifications/stream/{student_id}",
    stream_notifications,
    methods=["GET"],
    route_class_override=resolved_by(open_stream),
    response_class=EventStream,
    status_code=200,  # FastAPI cannot read it from EventStream's constructor
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`grade` events"},
        401: {"description": "No valid token"},
        403: {"description": "The token is for another student"},
        422: {"description": "A malformed student id or Last-Event-ID"},
        429: {"description": "Too many streams for this student, or attempts from this address"},
    },
)


@router.get("/notifications/missed/{student_id}")
async def list_missed(
    student: StudentDep,
    request: Request,
    since: Annotated[datetime | None, Query(description="Published at or after (ISO-8601)")] = None,
    after: Annotated[str | None, Query(pattern=EVENT_ID, description="After this id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> MissedPage:
    """Retained notifications, oldest first, a page at a time."""
    if since is not None and after is not None:
        raise InvalidRequest("give since or after, not both")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    page = await notifications_of(
        request.state.engine,
        student,
        after=int(after) if after is not None else None,
        since=since,
        limit=limit + 1,  # one more, to know whether there is a next page
    )
    more = len(page) > limit
    page = page[:limit]
    _, unread = await request.state.positions.read(student)
    return MissedPage(notifications=page, next=page[-1].id if more else None, unread=unread)


@router.post("/notifications/read-all")
async def read_all(student: TokenStudent, request: Request) -> Unread:
    """Mark every notification of the token's student read."""
    return await record_read(request, student, None)


@router.post("/notifications/{event_id}/read", responses={404: {"description": "No such id"}})
async def read_one(
    event_id: Annotated[str, Path(pattern=EVENT_ID)], student: TokenStudent, request: Request
) -> Unread:
    """Mark one notification of the token's student read."""
    return await record_read(request, student, int(event_id))


async def record_read(request: Request, student: Student, seq: int | None) -> Unread:
    state = request.state
    unread = await mark_read(state.engine, student, seq)
    if unread is None:
        raise NotFound("this student has no such notification")
    change = UnreadChanged(
        tenant_id=student.tenant_id, student_id=student.student_id, unread=unread
    )
    message = aio_pika.Message(change.model_dump_json().encode(), type=UNREAD)
    key = routing_key(shard_of(student, state.settings.BROKER_SHARDS))
    try:  # to every node with a stream of this student; the count itself is committed
        async with asyncio.timeout(state.settings.BROKER_TIMEOUT_SECONDS):
            await state.node_queue.exchange.publish(message, routing_key=key)
    except BROKER_ERRORS as error:
        logger.warning("could not announce the unread count of %s: %r", student.label(), error)
    return Unread(unread=unread)


@router.get("/connections", tags=["operations"], dependencies=[OperatorOnly])
async def list_connections(request: Request) -> Connections:
    """Open streams on this node, per student."""
    counts = request.state.hub.counts()
    return Connections(
        node=request.state.settings.NODE_ID, total=sum(counts.values()), students=counts
    )


@router.post("/notifications/session", status_code=204, tags=["notifications"])
async def open_session(
    request: Request,
    response: Response,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Keep the token (sent as 'Authorization: Bearer') in an HttpOnly cookie, out of URLs
    and of scripts' reach."""
    if credentials is None:
        raise Unauthorized("send the token as 'Authorization: Bearer'")
    token = credentials.credentials
    await verify(request, token)
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        httponly=True,
        secure=True,
        samesite="strict",
        path="/notifications",
        max_age=SESSION_SECONDS,
    )


@router.delete("/notifications/session", status_code=204, tags=["notifications"])
async def close_session(response: Response) -> None:
    """Forget the cookie."""
    response.delete_cookie(TOKEN_COOKIE, path="/notifications", secure=True, httponly=True)
