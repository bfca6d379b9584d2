"""Prometheus metrics, one registry per process. Labels never name a student."""

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class Tally(Collector):
    """A counter for a path taken once a delivery: a plain int that the event loop's thread
    adds to and a scrape reads. prometheus_client's Counter takes a lock on every inc."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation, self.value = name, documentation, 0
        REGISTRY.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


# Stream nodes
STREAM_CONNECTIONS = Gauge("gradecast_stream_connections", "Open SSE streams on this node")
EVENTS_DELIVERED = Tally("gradecast_events_delivered", "Grade frames sent to clients")
PUBLISH_TO_DELIVER = Histogram(
    "gradecast_publish_to_deliver_seconds",
    "From a broker message's first publishedAt to its node handing its grades to the "
    "students' streams (live only; once a message)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REPLAYS = Counter("gradecast_replays_total", "Replays from Postgres (reconnects, gaps, resyncs)")
RESETS = Counter("gradecast_resets_total", "Reset events sent to clients", ["reason"])
DEAD_LETTERED = Counter("gradecast_dead_lettered_total", "Broker messages a node could not read")

# Both web services
BROKER_RECONNECTS = Counter("gradecast_broker_reconnects_total", "Reconnections to RabbitMQ")
HTTP_REQUESTS = Counter(
    "gradecast_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "gradecast_http_request_seconds",
    "Time to the response's status line (a stream's whole life is not counted)",
    ["method", "route"],
)

# Publisher
PUBLISHED = Counter("gradecast_notifications_published_total", "Notifications stored")
OUTBOX_BACKLOG = Gauge("gradecast_outbox_backlog", "Broker messages waiting in the outbox")
OUTBOX_AGE = Gauge("gradecast_outbox_oldest_age_seconds", "Age of the oldest outbox message")
PUBLISH_WAITING = Gauge(
    "gradecast_publish_waiting", "Publish requests waiting for a statement to store them"
)
PUBLISH_BATCH = Histogram(
    "gradecast_publish_batch_publishes",
    "Publish requests stored by one statement (group commit): more under more load",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

# Retention worker
RETENTION_PURGED = Counter("gradecast_retention_purged_total", "Notifications purged")
RETENTION_FLOOR = Gauge(
    "gradecast_retention_floor_timestamp_seconds", "Everything published before is purged"
)
