"""Students read their own notifications with a token: `Authorization: Bearer`, `?token=`
(a browser's EventSource cannot set headers), or the HttpOnly cookie /notifications/session
sets. The token names the tenant; a student id means something only inside it.

The dependencies are `async def` although none waits: FastAPI runs a plain `def` in a
thread pool, a round trip between threads for each one on every connection."""

import math
from typing import Annotated

from fastapi import Cookie, Depends, Path, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from services.core.tenancy import Student
from services.core.tokens import InvalidToken, TokenVerifier
from services.web.errors import Forbidden, TooManyRequests, Unauthorized

TOKEN_COOKIE = "gradecast_token"
bearer = HTTPBearer(auto_error=False, description="A student token (JWT)")

STUDENT_ID = r"^[A-Za-z0-9._:@-]+$"
MAX_STUDENT_ID = 128
StudentIdPath = Annotated[str, Path(min_length=1, max_length=MAX_STUDENT_ID, pattern=STUDENT_ID)]


async def offered_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    token: Annotated[str | None, Query(description="The token, for EventSource")] = None,
    cookie: Annotated[str | None, Cookie(alias=TOKEN_COOKIE, include_in_schema=False)] = None,
) -> str:
    return first_token(credentials.credentials if credentials else None, token, cookie)


def first_token(*offered: str | None) -> str:
    """The header's, the query string's or the cookie's, in that order."""
    for token in offered:
        if token:
            return token
    raise Unauthorized("send a student token as 'Authorization: Bearer', ?token= or cookie")


async def verify(request: HTTPConnection, token: Annotated[str, Depends(offered_token)]) -> Student:
    verifier: TokenVerifier = request.state.tokens
    try:
        return verifier.verify(token)
    except InvalidToken as error:
        raise Unauthorized(f"the token is not valid: {error}") from error


async def authenticate_student(
    student_id: StudentIdPath, student: Annotated[Student, Depends(verify)]
) -> Student:
    """The student of the path, once the token proves the caller is that student."""
    if student.student_id != student_id:
        raise Forbidden("the token is for another student")
    return student


async def limit_connects(request: HTTPConnection) -> None:
    """Connection attempts per client address, before any other work, tokens included."""
    address = request.client.host if request.client else "unknown"
    wait = request.state.connect_limiter.acquire(address)
    if wait:
        raise TooManyRequests("too many connection attempts from this address", math.ceil(wait))


StudentDep = Annotated[Student, Depends(authenticate_student)]
TokenStudent = Annotated[Student, Depends(verify)]  # the student the token names
