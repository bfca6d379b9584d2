"""A student's live stream, what they missed, and this node's open connections."""

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from services.core.broker import BROKER_ERRORS
from services.core.events import CamelModel, NotificationPublic
from services.stream.auth import Student
from services.stream.history import notifications_of
from services.stream.hub import NodeFull, TooManyConnections
from services.stream.sse import EventStream, RetryLater
from services.web.errors import InvalidRequest, TooManyRequests

logger = logging.getLogger(__name__)
router = APIRouter(tags=["notifications"])

EVENT_ID = r"^[0-9]{1,18}$"
CONNECTION_LIMIT_RETRY_SECONDS = 30


class MissedPage(CamelModel):
    notifications: list[NotificationPublic]
    next: str | None  # the `after` of the following page; null at the end


class Connections(CamelModel):
    node: str
    total: int
    students: dict[str, int]


@router.get(
    "/notifications/stream/{student_id}",
    response_class=EventStream,
    status_code=200,  # FastAPI cannot read it from EventStream's constructor
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`grade` events"},
        401: {"description": "No valid token"},
        403: {"description": "The token is for another student"},
        429: {"description": "Too many open streams for this student on this node"},
    },
)
async def stream_notifications(
    student_id: Student,
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=EVENT_ID)] = None,
    last_event_id_query: Annotated[str | None, Query(alias="lastEventId", pattern=EVENT_ID)] = None,
) -> Response:
    """Live grades as Server-Sent Events, after replaying those since Last-Event-ID."""
    state = request.state
    after = last_event_id or last_event_id_query
    try:
        async with asyncio.timeout(state.settings.BROKER_TIMEOUT_SECONDS):
            subscriber = await state.hub.subscribe(student_id)
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
        logger.warning("could not bind the shard of %s: %r", student_id, error)
        return RetryLater(state.reconnect)
    return EventStream(
        engine=state.engine,
        subscriber=subscriber,
        release=state.hub.unsubscribe,
        after=int(after) if after is not None else None,
        heartbeat_seconds=state.settings.HEARTBEAT_SECONDS,
        reconnect=state.reconnect,
    )


@router.get("/notifications/missed/{student_id}")
async def list_missed(
    student_id: Student,
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
        student_id,
        after=int(after) if after is not None else None,
        since=since,
        limit=limit + 1,  # one more, to know whether there is a next page
    )
    more = len(page) > limit
    page = page[:limit]
    return MissedPage(notifications=page, next=page[-1].id if more else None)


@router.get("/connections", tags=["operations"])
async def list_connections(request: Request) -> Connections:
    """Open streams on this node, per student."""
    counts = request.state.hub.counts()
    return Connections(
        node=request.state.settings.NODE_ID, total=sum(counts.values()), students=counts
    )
