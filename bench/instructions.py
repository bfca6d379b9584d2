"""Counts the instructions a stream node spends on each stream: opened, sent one grade,
and closed, under valgrind's callgrind. The count repeats within a few percent from run to
run, where the bench's timings on a shared machine can move by a third: compare two
versions of the connect path with it (bench/RESULTS.md, eighth round).

    .venv/bin/python bench/instructions.py                # 500 streams
    .venv/bin/python bench/instructions.py --streams 200
"""

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from processes import LOGS, NODE, PUBLISHER, fresh_database, loadtest, service

# Counting starts once the node is up and warmed (its first streams import and cache code).
CALLGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
WARM_UP = 50
# Slow enough that the node, ~50 times slower under callgrind, keeps up.
OPTIONS = "--ramp-per-second 20 --publishes 1 --connect-timeout 120"
# No keepalive tick while counting: its work depends on how long the count takes.
NODE_ENV = {"HEARTBEAT_SECONDS": "3600"}
START_SECONDS = 180


def control(pid: int, option: str) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, stdout=subprocess.DEVNULL)


def counted(output: Path) -> int:
    """The instructions of the node's dumps (callgrind writes one file a dump)."""
    return sum(
        int(line.split()[1])
        for dump in output.parent.glob(f"{output.name}*")
        for line in dump.read_text().splitlines()
        if line.startswith("totals:")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=500, help="streams counted")
    streams = parser.parse_args().streams
    if shutil.which("valgrind") is None:
        raise SystemExit("bench: valgrind is needed (Debian: apt-get install valgrind)")
    fresh_database()
    LOGS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "callgrind.out"
        under = [*CALLGRIND, f"--callgrind-out-file={output}"]
        node_args = ["stream", "--node-id", "bench"]
        with (
            service(["publisher"], PUBLISHER, LOGS / "publisher.log"),
            service(node_args, NODE, LOGS / "stream-callgrind.log", NODE_ENV, under,
                    START_SECONDS) as node,
        ):  # fmt: skip
            loadtest(node.pid, f"--connections {WARM_UP} {OPTIONS}")
            control(node.pid, "--instr=on")
            loadtest(node.pid, f"--connections {streams} {OPTIONS}")
            control(node.pid, "--instr=off")
            control(node.pid, "--dump")
        print(f"{counted(output) / streams:,.0f} instructions a stream ({streams} streams)")


if __name__ == "__main__":
    main()
