"""Students read their own stream with a token: `Authorization: Bearer` or `?token=` (a
browser's EventSource cannot set headers)."""

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.core.tokens import InvalidToken, verify_token
from services.web.errors import Forbidden, Unauthorized

bearer = HTTPBearer(auto_error=False, description="A student token (JWT, HS256)")

StudentIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]


def authenticate_student(
    request: Request,
    student_id: StudentIdPath,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    token: Annotated[str | None, Query(description="The token, for EventSource")] = None,
) -> str:
    """The student id of the path, once the token proves the caller is that student."""
    offered = credentials.credentials if credentials is not None else token
    if not offered:
        raise Unauthorized("send a student token as 'Authorization: Bearer' or ?token=")
    secret = request.state.settings.GRADECAST_JWT_SECRET.get_secret_value()
    try:
        subject = verify_token(offered, secret)
    except InvalidToken as error:
        raise Unauthorized(f"the token is not valid: {error}") from error
    if subject != student_id:
        raise Forbidden("the token is for another student")
    return student_id


Student = Annotated[str, Depends(authenticate_student)]
