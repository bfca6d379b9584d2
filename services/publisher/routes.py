"""POST /grades/publish."""

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from services.core.events import PublishResult
from services.core.metrics import PUBLISHED
from services.publisher.auth import PublisherDep, authenticate_publisher, bearer
from services.publisher.group_commit import GroupCommit
from services.publisher.idempotency import IdempotentRequest
from services.publisher.schemas import GradePublish
from services.publisher.store import Publication
from services.web.body import read_json
from services.web.direct import check, resolved_by

router = APIRouter(tags=["publish"])

IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY = r"^[\x21-\x7e]+$", 255
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        pattern=IDEMPOTENCY_KEY,
        description="Retrying with the same key and body returns the first answer.",
    ),
]

REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": GradePublish.model_json_schema()}},
}


async def open_publish(request: Request) -> Response:
    """publish_grades' resolver (services.web.direct): FastAPI's dependency solving and
    request wrapper were a fifth of a publish's CPU."""
    publisher = await authenticate_publisher(request, await bearer(request))
    idempotency_key = request.headers.get("Idempotency-Key")
    check("Idempotency-Key", idempotency_key, IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY)
    return await publish_grades(publisher, request, idempotency_key)


async def publish_grades(
    publisher: PublisherDep, request: Request, idempotency_key: IdempotencyKey = None
) -> Response:
    """Store a grade for one or many students and push it to their streams."""
    publish, raw = await read_json(request, GradePublish)
    idempotency = None
    if idempotency_key:
        idempotency = IdempotentRequest.of(publisher.scope, idempotency_key, raw)
    group_commit: GroupCommit = request.state.group_commit
    stored = await group_commit.publish(Publication.of(publish, publisher), idempotency)
    PUBLISHED.inc(stored.count)
    headers = {"Idempotent-Replayed": "true"} if stored.replayed else None
    return Response(stored.answer(), 201, headers, media_type="application/json")


router.add_api_route(
    "/grades/publish",
    publish_grades,
    methods=["POST"],
    route_class_override=resolved_by(open_publish),
    status_code=201,
    response_model=PublishResult,  # encoded by Stored.answer()
    openapi_extra={"requestBody": REQUEST_BODY},
    responses={
        401: {"description": "No valid publisher key"},
        429: {"description": "This key publishes faster than its rate limit"},
        409: {"description": "The Idempotency-Key was used with another body"},
        413: {"description": "The body is over 1 MiB"},
        415: {"description": "The body is not JSON"},
        422: {"description": "The body breaks the schema; the message names the field"},
        503: {"description": "Postgres cannot be reached; nothing was written"},
    },
)
