"""Prometheus metrics on every service, as an operator's scraper reads them."""

import asyncio
import os

import httpx

from services.launch import GRADECAST
from tests.support import (
    ROOT,
    ServiceProcess,
    free_port,
    grade_body,
    open_stream,
    publish,
    samples,
    token_for,
    unique,
    value,
)


async def test_publisher_and_stream_node_metrics_move_with_the_traffic(
    client: httpx.AsyncClient, publisher: ServiceProcess, node_a: ServiceProcess
) -> None:
    before_pub = samples((await client.get(f"{publisher.url}/metrics")).text)
    before_node = samples((await client.get(f"{node_a.url}/metrics")).text)
    student = unique()
    async with open_stream(client, node_a.url, student, token_for(student)) as stream:
        during = samples((await client.get(f"{node_a.url}/metrics")).text)
        assert value(during, "gradecast_stream_connections") >= 1
        await publish(client, publisher.url, grade_body(student))
        await stream.next_event()
    after_pub = samples((await client.get(f"{publisher.url}/metrics")).text)
    after_node = samples((await client.get(f"{node_a.url}/metrics")).text)

    published = "gradecast_notifications_published_total"
    assert value(after_pub, published) == value(before_pub, published) + 1
    route = {"method": "POST", "route": "/grades/publish", "status": "201"}
    requests = "gradecast_http_requests_total"
    assert value(after_pub, requests, **route) == value(before_pub, requests, **route) + 1
    assert value(after_pub, "gradecast_outbox_backlog") >= 0
    delivered = "gradecast_events_delivered_total"
    assert value(after_node, delivered) >= value(before_node, delivered) + 1
    latency = "gradecast_publish_to_deliver_seconds_count"
    assert value(after_node, latency) >= value(before_node, latency) + 1
    assert value(after_node, "process_resident_memory_bytes") > 0


async def test_the_retention_worker_serves_metrics_on_its_own_port(
    service_env: dict[str, str],
) -> None:
    port = free_port()
    env = {**os.environ, **service_env, "RETENTION_METRICS_PORT": str(port)}
    worker = await asyncio.create_subprocess_exec(
        *GRADECAST,
        "retention",
        env=env,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stderr is not None
        while b"retention: purged" not in await worker.stderr.readline():
            pass
        async with httpx.AsyncClient() as client:
            metrics = samples((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
        assert value(metrics, "gradecast_retention_floor_timestamp_seconds") > 0
        assert ("gradecast_retention_purged_total", frozenset()) in metrics
    finally:
        worker.terminate()
        await worker.wait()
