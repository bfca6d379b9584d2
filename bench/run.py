"""Starts gradecast as a user runs it (one publisher, one stream node, against the local
Postgres and RabbitMQ), runs the scenarios of the performance targets with
`gradecast loadtest`, and appends the figures, dated and with the machine, to
bench/RESULTS.md.

    .venv/bin/python bench/run.py                 # every scenario
    .venv/bin/python bench/run.py idle replay     # some of them
    .venv/bin/python bench/run.py --scale 0.1     # a quick, smaller run
"""

import argparse
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cores
import retention
import scaleout
from processes import LOGS, NODE, PUBLISHER, ROOT, fresh_database, service
from scenarios import Scenario, scenarios

# A scenario's Row (scenarios.py), named with its scenario.
Result = tuple[str, str, str, Any, bool]  # scenario, figure, target, measured, met

RESULTS = ROOT / "bench" / "RESULTS.md"


def every_scenario(scale: float) -> dict[str, Scenario]:
    return {
        **scenarios(scale),
        "retention": retention.scenario(scale),
        "scaleout": scaleout.scenario(scale),
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split(":", 1)[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return f"{os.cpu_count()} cores ({cpu}), {memory} memory, Python {platform.python_version()}"


def record(
    rows: list[Result],
    shares: list[tuple[str, dict[str, float]]],
    note: str,
) -> None:
    nodes = any(row[0] == "scaleout" for row in rows)
    more = " (scaleout: up to three more nodes, behind nginx)" if nodes else ""
    lines = [
        f"\n## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {note}\n",
        f"Machine: {machine()}. One publisher and one stream node process{more}; the load "
        "generator shares the cores.\n",
        "| scenario | figure | target | measured | met |",
        "|---|---|---|---|---|",
        *(f"| {s} | {f} | {t} | {m} | {'yes' if ok else '**no**'} |" for s, f, t, m, ok in rows),
        "\nWhere the cores went in each scenario, in shares of all the cores' time (stolen: "
        "taken by the hypervisor for other guests):\n",
        *cores.table(shares),
    ]
    with RESULTS.open("a") as results:
        results.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", nargs="*", help="default: all")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="connection and row counts times this"
    )
    parser.add_argument("--note", default="gradecast bench", help="the heading of this run")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    chosen = every_scenario(args.scale)
    if unknown := set(args.scenario) - set(chosen):
        raise SystemExit(f"bench: no scenario {', '.join(sorted(unknown))}; of {', '.join(chosen)}")
    fresh_database()
    rows: list[Result] = []
    shares: list[tuple[str, dict[str, float]]] = []
    LOGS.mkdir(exist_ok=True)
    with (
        service(["publisher"], PUBLISHER, LOGS / "publisher.log"),
        service(["stream", "--node-id", "bench"], NODE, LOGS / "stream.log") as node,
    ):
        for name in args.scenario or list(chosen):
            shares.append((name, {}))
            with cores.measured(shares[-1][1]):
                figures = chosen[name](node.pid)
            for figure, target, measured, met in figures:
                rows.append((name, figure, target, measured, met))
    record(rows, shares, args.note + (f" (scale {args.scale})" if args.scale != 1 else ""))


if __name__ == "__main__":
    main()
