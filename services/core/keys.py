"""Publisher API keys kept in Postgres: created, listed and revoked by `gradecast keys`.
A key is shown once, when it is created; only its SHA-256 is stored."""

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.db import transaction
from services.core.models import PublisherKey

KEY_PREFIX = "gck_"
SHOWN_PREFIX = 12  # characters kept in clear, so people can tell keys apart


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(engine: AsyncEngine, tenant_id: str, name: str) -> tuple[int, str]:
    """The new key's id, and the key itself: the only time it is seen."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = {
        "tenant_id": tenant_id,
        "name": name,
        "prefix": key[:SHOWN_PREFIX],
        "key_hash": digest(key),
    }
    async with transaction(engine, one_statement=True) as connection:
        key_id = await connection.scalar(
            insert(PublisherKey).values(row).returning(PublisherKey.id)
        )
    assert key_id is not None
    return key_id, key


async def list_keys(
    engine: AsyncEngine,
) -> Sequence[Row[int, str, str, str, datetime, datetime | None]]:
    query = select(
        PublisherKey.id,
        PublisherKey.tenant_id,
        PublisherKey.name,
        PublisherKey.prefix,
        PublisherKey.created_at,
        PublisherKey.revoked_at,
    ).order_by(PublisherKey.id)
    async with transaction(engine, one_statement=True) as connection:
        return (await connection.execute(query)).all()


async def revoke_key(engine: AsyncEngine, key_id: int) -> bool:
    """False when there is no such key, or it was revoked already."""
    revoke = (
        update(PublisherKey)
        .where(PublisherKey.id == key_id, PublisherKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    async with transaction(engine, one_statement=True) as connection:
        return (await connection.execute(revoke)).rowcount == 1


async def find_active_key(engine: AsyncEngine, key_digest: str) -> tuple[int, str] | None:
    """The id and tenant of the key with this digest, unless it is unknown or revoked."""
    query = select(PublisherKey.id, PublisherKey.tenant_id).where(
        PublisherKey.key_hash == key_digest, PublisherKey.revoked_at.is_(None)
    )
    async with transaction(engine, one_statement=True) as connection:
        row = (await connection.execute(query)).first()
    return (row.id, row.tenant_id) if row else None
