"""What a stream missed, from Postgres: on reconnect (Last-Event-ID), after a gap in the
live frames, and after the broker connection was lost."""

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from services.core.metrics import EVENTS_DELIVERED, REPLAYS, RESETS
from services.core.tenancy import Student
from services.stream.frames import encode_event, encode_reset
from services.stream.history import notifications_of, purged_before

REPLAY_PAGE = 500
Write = Callable[[bytes], Awaitable[None]]  # SSE-encoded frames, one or several


async def replay(
    engine: AsyncEngine,
    student: Student,
    write: Write,
    after: int,
    until: int | None = None,
    reset: str | None = None,
) -> int:
    """Sends what Postgres holds after `after` (up to `until` at least, when given);
    returns the last sequence number sent. Sequences are gapless, so a jump means the
    retention worker purged what lies between: the client is told with one reset event
    (or with `reset`, a reason known beforehand)."""
    REPLAYS.inc()
    if reset is not None:
        await send_reset(engine, write, reset)
    while True:
        page = await notifications_of(engine, student, after=after, limit=REPLAY_PAGE)
        if page and page[0].seq != after + 1 and reset is None:
            reset = "expired"
            await send_reset(engine, write, reset)
        if page:
            await write(b"".join(encode_event(n) for n in page))
            EVENTS_DELIVERED.inc(len(page))
            after = page[-1].seq
        if len(page) < REPLAY_PAGE:
            break
    if until is not None and after < until:  # everything up to `until` was purged
        if reset is None:
            await send_reset(engine, write, "expired")
        after = until
    return after


async def send_reset(engine: AsyncEngine, write: Write, reason: str) -> None:
    RESETS.labels(reason).inc()
    await write(encode_reset(reason, await purged_before(engine)))
