"""Reading a JSON request body: the media type, the size (whatever Content-Length says) and
the schema are checked in that order, before anything is written."""

from email.message import Message
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from services.web.errors import (
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    describe_validation,
)

MAX_BODY_BYTES = 1024 * 1024

M = TypeVar("M", bound=BaseModel)


def is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    too_large = PayloadTooLarge(f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body has no Content-Length to trust
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, model: type[M]) -> tuple[M, bytes]:
    """The validated model and the raw bytes it came from."""
    if not is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("send the body as application/json")
    raw = await read_body(request)
    try:
        return model.model_validate_json(raw), raw
    except ValidationError as error:
        raise InvalidRequest(describe_validation(error.errors())) from error
