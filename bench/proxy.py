"""nginx in front of the bench's stream nodes, as deploy/nginx.conf puts it in front of a
deployment's: a config of the bench's own, in a directory of its own, so that it runs as a
child process of the bench without the system's paths (or root)."""

import math
import resource
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from processes import ROOT, START_SECONDS, STOP_SECONDS, wait_ready

from services.launch import stop

NGINX = "/usr/sbin/nginx"
# The hard open-file limit, which nginx inherits and its workers cannot raise.
FILES_PER_PROCESS = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # each defaults under /var

CONFIG = """\
# Written by bench/proxy.py for one scale-out run; deploy/nginx.conf is the real one.
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
# Every stream takes two files, and a process may open FILES_PER_PROCESS: enough workers.
worker_processes {workers};
worker_rlimit_nofile {files};

events {{
    # A worker's share of the streams, two connections each: the client's and the one to
    # a node.
    worker_connections {connections};
}}

http {{
    access_log off;
{temp_paths}
    upstream stream_nodes {{
        # Streams are long-lived: balance open connections, counted across workers. A node
        # slow to answer in a burst is not taken out of the rotation (max_fails=0).
        least_conn;
        zone stream_nodes 64k;
{servers}
        keepalive 16;
    }}

    server {{
{listens}
        location / {{
            proxy_pass http://stream_nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout 1h;
            # To a node from the stream's own source address (the load generator spreads
            # its streams over 16): from one address, the kernel's search for a free port
            # to a node lengthens as its ~28,000 ports fill, and the ramp stalled there.
            proxy_bind $remote_addr;
        }}
    }}
}}
"""


def config(directory: Path, nodes: Sequence[int], ports: Sequence[int], streams: int) -> str:
    """nginx.conf for `nodes` (ports) behind `ports`, sized for `streams` open at once."""
    workers = math.ceil((2 * streams + 1024) / (FILES_PER_PROCESS - 1024))
    connections = min(2 * streams + 1024, FILES_PER_PROCESS - 1024)  # per worker
    return CONFIG.format(
        dir=directory,
        workers=workers,
        files=FILES_PER_PROCESS,
        connections=connections,
        temp_paths="".join(f"    {name}_temp_path {directory}/{name};\n" for name in TEMP_PATHS),
        servers="\n".join(f"        server 127.0.0.1:{port} max_fails=0;" for port in nodes),
        # reuseport: the kernel spreads new connections evenly over the workers.
        listens="".join(f"        listen 127.0.0.1:{port} reuseport;\n" for port in ports),
    )


@contextmanager
def nginx(
    directory: Path, nodes: Sequence[int], ports: Sequence[int], streams: int
) -> Iterator[list[str]]:
    """nginx on `ports`, in front of the nodes on `nodes`; yields its URLs. Several ports
    because a client address reaches one address and port at most ~28,000 times at once
    (the ephemeral port range), fewer than a few nodes' streams."""
    subprocess.run(["bash", "scripts/ensure-nginx.sh"], cwd=ROOT, check=True)
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(config(directory, nodes, ports, streams))
    log = directory / "error.log"
    log.unlink(missing_ok=True)  # this run's errors only
    process = subprocess.Popen([NGINX, "-p", str(directory), "-c", str(conf), "-e", str(log)])
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            wait_ready(f"{url}/health", process, log, START_SECONDS)
        yield urls
    finally:
        # SIGTERM: nginx's fast shutdown, closing the streams still open.
        stop(process, STOP_SECONDS)
