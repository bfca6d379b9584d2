"""Which gradebook is publishing: its API key, from Postgres (or, for development, from
GRADECAST_PUBLISHER_KEYS), and whether it is within its rate limit."""

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.keys import digest, find_active_key
from services.core.tenancy import DEFAULT_TENANT
from services.web.errors import TooManyRequests, Unauthorized

bearer = HTTPBearer(auto_error=False, description="A publisher API key")
CACHED_KEYS = 10_000


@dataclass(frozen=True)
class Publisher:
    tenant_id: str
    key_id: str  # recorded with each notification it publishes
    scope: str  # the key's digest: idempotency keys and rate limits are per key


class PublisherKeys:
    """Looks keys up by digest. A lookup is cached for PUBLISHER_KEY_CACHE_SECONDS, so a
    revoked key stops working on every publisher within that time."""

    def __init__(self, engine: AsyncEngine, bootstrap: tuple[SecretStr, ...], ttl: float) -> None:
        self.engine = engine
        self.ttl = ttl
        self.bootstrap = {
            scope: Publisher(DEFAULT_TENANT, f"env:{scope[:8]}", scope)
            for scope in (digest(key.get_secret_value()) for key in bootstrap)
        }
        self.cache: OrderedDict[str, tuple[float, Publisher | None]] = OrderedDict()

    async def resolve(self, key: str) -> Publisher | None:
        scope = digest(key)  # compared as digests: timing says nothing about the keys
        if scope in self.bootstrap:
            return self.bootstrap[scope]
        now = time.monotonic()
        cached = self.cache.get(scope)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await find_active_key(self.engine, scope)
        publisher = Publisher(found[1], f"key:{found[0]}", scope) if found else None
        self.cache[scope] = (now + self.ttl, publisher)
        self.cache.move_to_end(scope)
        if len(self.cache) > CACHED_KEYS:
            self.cache.popitem(last=False)
        return publisher


async def authenticate_publisher(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Publisher:
    if credentials is None:
        raise Unauthorized("send a publisher key as 'Authorization: Bearer <key>'")
    keys: PublisherKeys = request.state.keys
    publisher = await keys.resolve(credentials.credentials)
    if publisher is None:
        raise Unauthorized("the publisher key is not valid")
    wait = request.state.publish_limiter.acquire(publisher.scope)
    if wait:
        raise TooManyRequests("this key publishes too fast; slow down", math.ceil(wait))
    return publisher


PublisherDep = Annotated[Publisher, Depends(authenticate_publisher)]
