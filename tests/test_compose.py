"""The container deployment, checked by reading its files: no Docker engine is needed."""

import argparse
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services.cli import PUBLISHER_PORT, STREAM_PORT, parser
from services.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

EXPECTED_SERVICES = {
    "postgres",
    "rabbitmq",
    "migrate",
    "publisher",
    "stream-a",
    "stream-b",
    "retention",
    "nginx",
}
REQUIRED_SECRETS = ("GRADECAST_JWT_SECRET", "GRADECAST_PUBLISHER_KEYS")
NGINX_CONF_IN_CONTAINER = "/etc/nginx/nginx.conf"

Service = dict[str, Any]


@pytest.fixture(scope="module")
def services() -> dict[str, Service]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    return dict(compose["services"])


@pytest.fixture(scope="module")
def gradecast_services(services: dict[str, Service]) -> dict[str, Service]:
    """The services run from the image this repository builds."""
    built_here = {}
    for name, service in services.items():
        build = service.get("build")
        context = build.get("context") if isinstance(build, dict) else build
        if context in (".", "./"):
            built_here[name] = service
    return built_here


@pytest.fixture(scope="module")
def stream_services(gradecast_services: dict[str, Service]) -> dict[str, Service]:
    return {
        name: service
        for name, service in gradecast_services.items()
        if service["command"][0] == "stream"
    }


def environment_of(service: Service) -> dict[str, str]:
    """Both forms compose accepts: a mapping, or a list of NAME=value."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(entry.partition("=")[::2] for entry in environment)
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def published_host_ports(service: Service) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            if "published" in entry:
                ports.add(int(entry["published"]))
            continue
        # [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]; a bare port publishes a random one.
        parts = str(entry).split("/")[0].split(":")
        if len(parts) >= 2:
            ports.add(int(parts[-2]))
    return ports


def nginx_config_path(nginx: Service) -> Path:
    for volume in nginx.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume["source"], volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if target == NGINX_CONF_IN_CONTAINER:
            return ROOT / source
    raise AssertionError(f"nginx mounts nothing at {NGINX_CONF_IN_CONTAINER}")


def parse_command(service_name: str, command: list[str]) -> argparse.Namespace:
    """What `gradecast` makes of the arguments, without running anything."""
    try:
        return parser().parse_args(command)
    except SystemExit:
        pytest.fail(f"{service_name}: gradecast does not accept {command}")


def dockerfile_instructions(name: str) -> list[str]:
    """The arguments of every instruction called `name`, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pattern = rf"^\s*{name}\s+(.+)$"
    return [match.strip() for match in re.findall(pattern, text, re.MULTILINE | re.IGNORECASE)]


def test_every_service_is_defined(services: dict[str, Service]) -> None:
    assert EXPECTED_SERVICES <= services.keys()


def test_gradecast_services_are_built_from_the_repository(
    gradecast_services: dict[str, Service],
) -> None:
    assert gradecast_services.keys() == {
        "migrate",
        "publisher",
        "stream-a",
        "stream-b",
        "retention",
    }


@pytest.mark.parametrize(
    ("service", "port"), [("publisher", 8000), ("nginx", 8080), ("rabbitmq", 15672)]
)
def test_port_is_published(services: dict[str, Service], service: str, port: int) -> None:
    assert port in published_host_ports(services[service])


def test_stream_nodes_are_reached_through_nginx_only(stream_services: dict[str, Service]) -> None:
    assert stream_services, "no service runs `gradecast stream`"
    for name, service in stream_services.items():
        assert not published_host_ports(service), f"{name} is published to the host"


def test_environment_names_are_settings_fields(gradecast_services: dict[str, Service]) -> None:
    # Settings ignores unknown names, so a misspelt one would be dropped without a word.
    for name, service in gradecast_services.items():
        unknown = environment_of(service).keys() - Settings.model_fields.keys()
        assert not unknown, f"{name} sets {sorted(unknown)}, which Settings does not read"


def test_secrets_come_from_the_user_and_are_required(
    gradecast_services: dict[str, Service],
) -> None:
    for name, service in gradecast_services.items():
        environment = environment_of(service)
        for secret in REQUIRED_SECRETS:
            value = environment.get(secret, "")
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", value), (
                f"{name} must take {secret} as ${{{secret}:?message}}, not {value!r}"
            )


def test_gradecast_services_listen_on_every_interface(
    gradecast_services: dict[str, Service],
) -> None:
    for name, service in gradecast_services.items():
        assert environment_of(service).get("HOST") == "0.0.0.0", name


def test_database_and_broker_urls_name_the_compose_services(
    services: dict[str, Service], gradecast_services: dict[str, Service]
) -> None:
    postgres = environment_of(services["postgres"])
    for name, service in gradecast_services.items():
        environment = environment_of(service)
        database = urlsplit(environment["DATABASE_URL"])
        assert database.scheme == "postgresql+asyncpg", name
        assert (database.hostname, database.port) == ("postgres", 5432), name
        assert database.username == postgres.get("POSTGRES_USER", "postgres"), name
        if postgres.get("POSTGRES_HOST_AUTH_METHOD") != "trust":
            assert database.password == postgres["POSTGRES_PASSWORD"], name
        assert database.path.lstrip("/") == postgres.get("POSTGRES_DB", database.username), name
        broker = urlsplit(environment["AMQP_URL"])
        assert (broker.scheme, broker.hostname, broker.port) == ("amqp", "rabbitmq", 5672), name


def test_commands_are_gradecast_subcommands(gradecast_services: dict[str, Service]) -> None:
    for name, service in gradecast_services.items():
        command = service["command"]
        assert isinstance(command, list), f"{name}: use the exec form, a list"
        assert parse_command(name, command).command == command[0], name


def test_stream_nodes_have_distinct_node_ids(stream_services: dict[str, Service]) -> None:
    # Each node consumes a queue named after its id: a shared id would split one queue.
    node_ids = []
    for name, service in stream_services.items():
        node_id = parse_command(name, service["command"]).node_id
        node_id = node_id or environment_of(service).get("NODE_ID")
        assert node_id, f"{name} leaves its node id to the container's host name"
        node_ids.append(node_id)
    assert len(stream_services) >= 2
    assert len(set(node_ids)) == len(node_ids), node_ids


def test_services_wait_for_the_migration(
    services: dict[str, Service], gradecast_services: dict[str, Service]
) -> None:
    assert services["migrate"]["restart"] == "no"  # a string: bare `no` is YAML's false
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in gradecast_services.items():
        if name == "migrate":
            continue
        depends_on = service["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert service["restart"] == "unless-stopped", name


def test_nginx_config_streams_from_both_nodes(
    services: dict[str, Service], stream_services: dict[str, Service]
) -> None:
    config_path = nginx_config_path(services["nginx"])
    assert config_path.is_file(), config_path
    config = config_path.read_text()
    assert re.search(r"^\s*proxy_buffering\s+off;", config, re.MULTILINE)
    upstream_bodies = re.findall(r"upstream\s+[\w.-]+\s*\{([^}]*)\}", config)
    node_addresses = {
        f"{name}:{environment_of(service).get('PORT', STREAM_PORT)}"
        for name, service in stream_services.items()
    }
    assert any(
        node_addresses <= set(re.findall(r"^\s*server\s+(\S+?)[\s;]", body, re.MULTILINE))
        for body in upstream_bodies
    ), f"no upstream names all of {sorted(node_addresses)}"


def test_the_stream_holders_have_files_and_a_listen_queue_for_every_stream(
    services: dict[str, Service], stream_services: dict[str, Service]
) -> None:
    """A file per connection, and a reconnecting crowd queued rather than reset."""
    for name in [*stream_services, "nginx"]:
        service = services[name]
        assert service["ulimits"]["nofile"] >= 65536, name
        assert service["sysctls"]["net.core.somaxconn"] >= 65535, name
        assert service["sysctls"]["net.ipv4.tcp_max_syn_backlog"] >= 65535, name
    # nginx reaches each node from one address, a local port per stream: the widest range.
    low, high = map(int, services["nginx"]["sysctls"]["net.ipv4.ip_local_port_range"].split())
    assert (low, high) == (1024, 65535)
    config = nginx_config_path(services["nginx"]).read_text()
    files = int(re.findall(r"^worker_rlimit_nofile\s+(\d+);", config, re.MULTILINE)[0])
    connections = int(re.findall(r"^\s*worker_connections\s+(\d+);", config, re.MULTILINE)[0])
    assert connections < files <= services["nginx"]["ulimits"]["nofile"]
    assert connections >= 2 * 20_000  # a node's worth of streams, each two connections
    assert re.search(r"^\s*listen\s+80\s+backlog=65535;", config, re.MULTILINE)


def test_dockerfile_entrypoint_is_gradecast() -> None:
    entrypoints = dockerfile_instructions("ENTRYPOINT")
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["gradecast"]


def test_dockerfile_runs_as_a_user_other_than_root() -> None:
    users = dockerfile_instructions("USER")
    assert users, "the Dockerfile has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_image_holds_what_migrate_reads() -> None:
    # `gradecast migrate` finds alembic.ini and migrations/ beside the installed source.
    copied = " ".join(dockerfile_instructions("COPY"))
    for needed in ("alembic.ini", "migrations", "services", "pyproject.toml"):
        assert needed in copied, f"the Dockerfile does not copy {needed}"
    assert any("-e ." in run for run in dockerfile_instructions("RUN"))


# Monitoring: Prometheus scrapes every gradecast process; Grafana shows the dashboard.

PROMETHEUS_CONFIG_IN_CONTAINER = "/etc/prometheus/prometheus.yml"
GRAFANA_PROVISIONING_IN_CONTAINER = "/etc/grafana/provisioning"
DASHBOARD_FILE = ROOT / "deploy" / "grafana" / "dashboards" / "gradecast.json"
RETENTION_METRICS_PORT = 8010  # the default of the setting of that name

# What the processes export (besides process_* and Prometheus's own `up`).
METRICS = {
    "gradecast_stream_connections",
    "gradecast_events_delivered_total",
    "gradecast_publish_to_deliver_seconds",
    "gradecast_replays_total",
    "gradecast_resets_total",
    "gradecast_broker_reconnects_total",
    "gradecast_dead_lettered_total",
    "gradecast_notifications_published_total",
    "gradecast_outbox_backlog",
    "gradecast_outbox_oldest_age_seconds",
    "gradecast_publish_waiting",
    "gradecast_publish_batch_publishes",
    "gradecast_retention_purged_total",
    "gradecast_retention_floor_timestamp_seconds",
    "gradecast_http_requests_total",
    "gradecast_http_request_seconds",
}
HISTOGRAMS = {
    "gradecast_publish_to_deliver_seconds",
    "gradecast_publish_batch_publishes",
    "gradecast_http_request_seconds",
}
SERIES = METRICS | {
    f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}
PROMQL_KEYWORDS = {
    *("and", "or", "unless", "bool", "offset"),
    *("by", "without", "on", "ignoring", "group_left", "group_right"),
}


def mounts(service: Service) -> dict[str, Path]:
    """Bind mounts, by their path in the container."""
    mounted = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume["source"], volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounted[target] = ROOT / source
    return mounted


def container_ports(service: Service) -> set[int]:
    ports = {int(str(port).split("/")[0]) for port in service.get("expose", [])}
    for entry in service.get("ports", []):
        target = entry["target"] if isinstance(entry, dict) else str(entry).split(":")[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def metrics_port(service: Service) -> int:
    """Where a gradecast process serves /metrics: its HTTP port, or retention's own."""
    environment = environment_of(service)
    kind = service["command"][0]
    if kind == "retention":
        field = Settings.model_fields.get("RETENTION_METRICS_PORT")
        default = field.default if field is not None else RETENTION_METRICS_PORT
        return int(environment.get("RETENTION_METRICS_PORT", default))
    return int(
        environment.get("PORT") or {"publisher": PUBLISHER_PORT, "stream": STREAM_PORT}[kind]
    )


def metric_names(expression: str) -> set[str]:
    """The series names a PromQL expression selects."""
    expression = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # strings
    expression = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expression)  # matchers, ranges
    expression = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expression
    )
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expression):
        is_function = expression[match.end() :].lstrip().startswith("(")
        if not is_function and match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def loopback_ports(service: Service) -> set[str]:
    return {str(entry).rsplit(":", 1)[0] for entry in service.get("ports", [])}


@pytest.fixture(scope="module")
def prometheus_config(services: dict[str, Service]) -> dict[str, Any]:
    path = mounts(services["prometheus"]).get(PROMETHEUS_CONFIG_IN_CONTAINER)
    assert path is not None, f"prometheus mounts nothing at {PROMETHEUS_CONFIG_IN_CONTAINER}"
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return parsed


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_prometheus_and_grafana_run_on_loopback(services: dict[str, Service]) -> None:
    assert services["prometheus"]["image"] == "prom/prometheus:v3.5.0"
    assert services["grafana"]["image"] == "grafana/grafana:12.1.0"
    assert loopback_ports(services["prometheus"]) == {"127.0.0.1:9090"}
    assert loopback_ports(services["grafana"]) == {"127.0.0.1:3000"}
    assert PROMETHEUS_CONFIG_IN_CONTAINER in mounts(services["prometheus"])
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        if str(volume).startswith("./"):
            assert str(volume).endswith(":ro"), volume


def test_every_gradecast_process_is_scraped_on_its_metrics_port(
    prometheus_config: dict[str, Any], gradecast_services: dict[str, Service]
) -> None:
    assert prometheus_config["global"]["scrape_interval"] == "5s"
    scraped = set()
    for job in prometheus_config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job["static_configs"]:
            for target in static["targets"]:
                name, _, port = target.rpartition(":")
                assert name in gradecast_services, f"{target} names no gradecast service"
                service = gradecast_services[name]
                assert job["job_name"] == service["command"][0], f"{target} in the wrong job"
                assert int(port) == metrics_port(service), target
                assert int(port) in container_ports(service), f"{name} does not expose {port}"
                scraped.add(name)
    assert scraped == gradecast_services.keys() - {"migrate"}


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard(
    services: dict[str, Service], dashboard: dict[str, Any]
) -> None:
    grafana = services["grafana"]
    environment = environment_of(grafana)
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    grafana_mounts = mounts(grafana)
    provisioning = grafana_mounts[GRAFANA_PROVISIONING_IN_CONTAINER]
    assert provisioning == ROOT / "deploy" / "grafana" / "provisioning"

    datasources = [
        source
        for path in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    [prometheus] = datasources
    assert (prometheus["type"], prometheus["url"]) == ("prometheus", "http://prometheus:9090")
    used = {
        target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel["targets"]
    }
    assert used == {prometheus["uid"]}

    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    [provider] = providers
    dashboards_dir = grafana_mounts[provider["options"]["path"]]
    assert dashboards_dir / DASHBOARD_FILE.name == DASHBOARD_FILE


def test_dashboard_panels_have_a_title_and_a_query(dashboard: dict[str, Any]) -> None:
    assert (dashboard["uid"], dashboard["title"]) == ("gradecast", "gradecast")
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel.get("title"), panel
        assert panel.get("targets"), panel["title"]
        assert all(target.get("expr") for target in panel["targets"]), panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)


def test_dashboard_queries_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    charted = set()
    for expression in dashboard_expressions(dashboard):
        names = metric_names(expression)
        assert names, expression
        unknown = {n for n in names - SERIES - {"up"} if not n.startswith("process_")}
        assert not unknown, f"{expression} reads {sorted(unknown)}"
        charted |= names
    for name in METRICS:
        assert charted & {name, f"{name}_bucket"}, f"no panel charts {name}"


def test_metric_names_are_read_from_promql() -> None:
    expression = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{job=~"x|y"}'
        "[$__rate_interval]))) / on (job) group_left b_total - time() + ignoring(i) c"
    )
    assert metric_names(expression) == {"a_seconds_bucket", "b_total", "c"}
