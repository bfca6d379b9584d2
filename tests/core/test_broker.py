"""Student ids to shards and routing keys, and the link's view of a real connection."""

import logging
import random
import zlib

import pytest

from services.core import broker
from services.core.broker import BrokerLink, node_queue_name, routing_key, shard_of
from services.core.settings import Settings
from services.core.tenancy import Student


def test_shard_of_a_known_id() -> None:
    assert shard_of(Student("default", "student-42"), 64) == 44
    assert shard_of(Student("school-a", "alice"), 64) == zlib.crc32(b"school-a/alice") % 64


def test_shard_of_is_the_same_on_every_call() -> None:
    assert {shard_of(Student("default", "student-7"), 64) for _ in range(100)} == {
        shard_of(Student("default", "student-7"), 64)
    }


@pytest.mark.parametrize("shards", [1, 2, 7, 64, 4096])
def test_shard_of_stays_in_range(shards: int) -> None:
    rng = random.Random(shards)
    for _ in range(500):
        assert (
            0 <= shard_of(Student("default", f"student-{rng.getrandbits(64):x}"), shards) < shards
        )


def test_a_thousand_students_reach_every_shard() -> None:
    rng = random.Random(0)
    shards = [
        shard_of(Student("default", f"student-{rng.getrandbits(64):x}"), 64) for _ in range(1000)
    ]
    assert set(shards) == set(range(64))


def test_routing_key() -> None:
    assert routing_key(0) == "shard.0"
    assert routing_key(63) == "shard.63"


def test_node_queue_name() -> None:
    assert node_queue_name("node-a") == "gradecast.stream.node-a"


async def test_closing_the_link_is_not_reported_as_a_lost_connection(
    service_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(AMQP_URL=service_env["AMQP_URL"])
    link = BrokerLink(await broker.connect(settings, "test-link"))
    assert link.up
    with caplog.at_level(logging.INFO, logger="services.core.broker"):
        await link.close(settings.BROKER_TIMEOUT_SECONDS)
    assert not link.up
    assert link.connection.is_closed
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
