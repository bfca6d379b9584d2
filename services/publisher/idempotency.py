"""Idempotency-Key: the same key and an equal JSON body within the retention window get the
first answer again; the same key with another body is a conflict."""

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.web.errors import Conflict

# Claims the key, or takes it over when the earlier use has expired. A concurrent request
# with the same key waits here on the unique index until the first one commits.
CLAIM = text("""
    INSERT INTO idempotency_keys AS k (scope, key, request_hash)
    VALUES (:scope, :key, :request_hash)
    ON CONFLICT (scope, key) DO UPDATE
        SET request_hash = excluded.request_hash, response = NULL, created_at = now()
        WHERE k.created_at < now() - make_interval(secs => :retention_seconds)
    RETURNING 1
""")
EARLIER = text(
    "SELECT request_hash, response FROM idempotency_keys WHERE scope = :scope AND key = :key"
)
REMEMBER = text("""
    UPDATE idempotency_keys SET response = CAST(:response AS jsonb)
    WHERE scope = :scope AND key = :key
""")


@dataclass(frozen=True)
class IdempotentRequest:
    scope: str  # the publisher key's digest: keys of different gradebooks never collide
    key: str
    request_hash: str

    @classmethod
    def of(cls, scope: str, key: str, body: bytes) -> "IdempotentRequest":
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
        return cls(scope, key, hashlib.sha256(canonical).hexdigest())

    async def claim(self, connection: AsyncConnection, retention_seconds: float) -> Any | None:
        """None when this request is the first; otherwise the first one's answer."""
        params = {"scope": self.scope, "key": self.key, "request_hash": self.request_hash}
        claimed = await connection.execute(
            CLAIM, {**params, "retention_seconds": retention_seconds}
        )
        if claimed.first() is not None:
            return None
        earlier = (await connection.execute(EARLIER, params)).one()
        if earlier.request_hash != self.request_hash:
            raise Conflict("this Idempotency-Key was already used with a different body")
        return earlier.response

    async def remember(self, connection: AsyncConnection, answer: bytes) -> None:
        params = {"scope": self.scope, "key": self.key, "response": answer.decode()}
        await connection.execute(REMEMBER, params)
