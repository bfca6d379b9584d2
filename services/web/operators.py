"""Endpoints for operators only (they name students): with OPERATOR_TOKEN set, callers
show it as a bearer token; without it, only this machine may call them."""

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.web.errors import Forbidden, Unauthorized

LOOPBACK = ("127.0.0.1", "::1")
bearer = HTTPBearer(auto_error=False, description="OPERATOR_TOKEN")


async def operator_only(  # async: no thread pool hop
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    token = request.state.settings.OPERATOR_TOKEN
    if token is None:
        if request.client is None or request.client.host not in LOOPBACK:
            raise Forbidden("set OPERATOR_TOKEN to reach this from elsewhere than the host")
        return
    offered = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(offered, token.get_secret_value().encode()):
        raise Unauthorized("send OPERATOR_TOKEN as 'Authorization: Bearer'")


OperatorOnly = Depends(operator_only)
