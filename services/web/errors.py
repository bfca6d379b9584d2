"""One error type, one handler, one JSON shape: {"error": {"code": ..., "message": ...}}."""

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.core.db import DatabaseUnavailable

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


class ApiError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, {"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status_code, code = 403, "forbidden"


class NotFound(ApiError):
    status_code, code = 404, "not_found"


class Conflict(ApiError):
    status_code, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status_code, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status_code, code = 415, "unsupported_media_type"


class InvalidRequest(ApiError):
    status_code, code = 422, "invalid_request"


class TooManyRequests(ApiError):
    status_code, code = 429, "too_many_requests"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_seconds)})


class ServiceUnavailable(ApiError):
    status_code, code = 503, "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, {"Retry-After": RETRY_AFTER_SECONDS})


def error_response(error: ApiError) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message}}
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


def describe_validation(errors: Sequence[Any]) -> str:
    """'studentIds: List should have at most 10000 items; grade: ...'"""
    parts = []
    for error in errors:
        location = [str(part) for part in error["loc"] if part not in ("body", "query", "header")]
        field = ".".join(location) or "body"
        parts.append(f"{field}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


async def handle_api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error_response(error)


async def handle_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return error_response(InvalidRequest(describe_validation(error.errors())))


async def handle_http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    api_error = ApiError(str(error.detail), dict(error.headers or {}))
    api_error.status_code = error.status_code
    api_error.code = error.detail.lower().replace(" ", "_") if error.detail else "error"
    return error_response(api_error)


async def handle_database_down(request: Request, error: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", error)
    return error_response(ServiceUnavailable("the database cannot be reached; retry later"))


async def handle_unexpected(request: Request, error: Exception) -> JSONResponse:
    # Starlette logs and re-raises it after this answer.
    return error_response(ApiError("internal server error"))


Handler = Callable[[Request, Exception], Coroutine[Any, Any, JSONResponse]]
# By the exception class each handles. Exception's goes to the server error middleware,
# which logs the error after answering.
HANDLERS: dict[type[Exception], Handler] = {
    ApiError: handle_api_error,
    RequestValidationError: handle_validation_error,
    HTTPException: handle_http_error,
    DatabaseUnavailable: handle_database_down,
    Exception: handle_unexpected,
}


def install_error_handlers(app: FastAPI) -> None:
    for error, handler in HANDLERS.items():
        app.add_exception_handler(error, handler)
