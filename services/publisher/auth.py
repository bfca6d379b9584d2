"""Gradebooks authenticate with one of the API keys in GRADECAST_PUBLISHER_KEYS."""

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.web.errors import Unauthorized

bearer = HTTPBearer(auto_error=False, description="A publisher API key")


def authenticate_publisher(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The key's scope: a digest that names the key without keeping it."""
    if credentials is None:
        raise Unauthorized("send a publisher key as 'Authorization: Bearer <key>'")
    offered = credentials.credentials.encode()
    keys = request.state.settings.GRADECAST_PUBLISHER_KEYS
    # Compare with every key, in constant time, so timing tells nothing about the keys.
    matches = [hmac.compare_digest(offered, key.get_secret_value().encode()) for key in keys]
    if not any(matches):
        raise Unauthorized("the publisher key is not valid")
    return hashlib.sha256(offered).hexdigest()


PublisherScope = Annotated[str, Depends(authenticate_publisher)]
