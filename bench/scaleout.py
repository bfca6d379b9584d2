"""The scale-out scenario: 1, 2, then 3 stream node processes behind nginx, each count
offered connections and broadcasts in proportion. Connections held and deliveries per
second should grow with the nodes."""

import math
from contextlib import ExitStack

from processes import LOGS, loadtest, service
from proxy import nginx
from scenarios import PATIENT, RAMP, Row, Scenario, held

MAX_NODES = 3
# Streams offered per node at scale 1: below a node's cap (its open-file limit less 100,
# 19,900 here) by enough that nginx's balancing, even but not exact, stays under it.
PER_NODE = 19_000
# The load generator's processes may each open 20,000 files; they share out students, not
# connections, so a process may get a few hundred more than its even share.
PER_PROCESS = 19_000
MAX_STUDENTS = 10_000  # a broadcast names each of its students
NODE_PORT, PROXY_PORT = 18011, 18021
# Connections outnumber students (a broadcast names each of them), and nginx may send
# several of one student's to the same node: room for them.
NODE_ENV = {"MAX_CONNECTIONS_PER_STUDENT": "32"}


def measure(
    nodes: int, pids: list[int], connections: int, students: int
) -> tuple[tuple[int, str], float]:
    """Connections held and deliveries per second with `nodes` behind nginx: the connections
    held, then 30 broadcasts to them, as the broadcast scenario sends."""
    processes = math.ceil(connections / PER_PROCESS)
    node_ports = [NODE_PORT + k for k in range(nodes)]
    proxy_ports = [PROXY_PORT + k for k in range(nodes)]
    with nginx(LOGS / "nginx", node_ports, proxy_ports, connections) as urls:
        options = (
            f"--connections {connections} --students {students} --processes {processes} "
            f"{RAMP} --mode broadcast --publishes 30 --concurrency 1 --rate 1000 "
            f"{PATIENT}"
        )
        # RSS per node in its summary is not read: its streams are nginx's ports, not nodes.
        summary = loadtest(pids[0], options, streams=urls, pids=pids)
    return held(summary), summary["deliveries"]["per_second"]


def scenario(scale: float) -> Scenario:
    per_node = max(1, int(PER_NODE * scale))
    # The same students whatever the nodes, so that each broadcast costs the publisher the
    # same and only the deliveries grow with the nodes.
    students = min(per_node, MAX_STUDENTS)

    def scaleout(_: int) -> list[Row]:
        rows: list[Row] = []
        pids: list[int] = []
        previous = 0.0
        with ExitStack() as nodes:
            for count in range(1, MAX_NODES + 1):
                args = ["stream", "--node-id", f"scaleout-{count}"]
                log = LOGS / f"stream-scaleout-{count}.log"
                node = service(args, NODE_PORT + count - 1, log, NODE_ENV)
                pids.append(nodes.enter_context(node).pid)
                connections = per_node * count
                (streams, cell), rate = measure(count, pids, connections, students)
                name = f"{count} node{'s' if count > 1 else ''}"
                grows = f"> {round(previous)}, with one node fewer" if previous else "-"
                rows += [
                    (f"{name}: connections held", f"all of {connections}", cell,
                     streams == connections),
                    (f"{name}: 30 broadcasts, deliveries per second", grows, round(rate),
                     rate > previous),
                ]  # fmt: skip
                previous = rate
        return rows

    return scaleout
