"""Where the cores went during a scenario: gradecast's processes, Postgres, RabbitMQ, the load
generator, nginx, the rest (the kernel's network work, mostly), what was idle, and what the
hypervisor took for other guests (steal). On a shared machine a scenario's figures are only
as good as the cores it got, so each is recorded beside them."""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_SECONDS = 0.5  # a process that ends between two samples loses at most this much
# Each group's processes, by a word of their command line (or of their name).
GROUPS = {
    "publisher": "publisher",
    "stream nodes": "stream",
    "retention": "retention",
    "load generator": "loadtest",
    "Postgres": "postgres",
    "RabbitMQ": "beam.smp",
    "nginx": "nginx",  # scaleout's
}
COLUMNS = [*GROUPS, "rest", "idle", "stolen"]


def own_group(pid: str) -> str | None:
    """The group a process's name or the first words of its command line name."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:4]
    except OSError:
        return None
    names = {comm, *(os.path.basename(word.decode(errors="replace")) for word in words)}
    return next((group for group, word in GROUPS.items() if word in names), None)


def stat(pid: str) -> tuple[str, int] | None:
    """A process's parent, and its user and system time in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[1], int(fields[11]) + int(fields[12])


def machine_ticks() -> dict[str, int]:
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "stolen": steal}


@dataclass
class Usage:
    """Ticks per group, from a process's first sample (0 if it started later) to its last. A
    process no group names belongs to its parent's (the load generator's client processes)."""

    first: dict[str, int] = field(default_factory=dict)
    last: dict[str, tuple[str, int]] = field(default_factory=dict)  # pid: group, ticks

    def sample(self, starting: bool = False) -> None:
        found = {pid: s for pid in os.listdir("/proc") if pid.isdigit() and (s := stat(pid))}
        for pid, (parent, ticks) in sorted(found.items(), key=lambda item: int(item[0])):
            if pid in self.last:
                self.last[pid] = (self.last[pid][0], ticks)
            # Looked at again each time: a child caught before its exec has its parent's name.
            elif group := own_group(pid) or self.last.get(parent, ("", 0))[0]:
                self.first[pid] = ticks if starting else 0
                self.last[pid] = (group, ticks)

    def ticks(self) -> dict[str, int]:
        used = dict.fromkeys(GROUPS, 0)
        for pid, (group, ticks) in self.last.items():
            used[group] += ticks - self.first[pid]
        return used


@contextmanager
def measured(shares: dict[str, float]) -> Iterator[None]:
    """Fills `shares` with each column's percentage of all the cores over the block."""
    usage, stop = Usage(), threading.Event()
    usage.sample(starting=True)
    before = machine_ticks()

    def sampling() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            usage.sample()

    sampler = threading.Thread(target=sampling, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
        usage.sample()
        after = machine_ticks()
        machine = {key: after[key] - before[key] for key in after}
        total = max(1, sum(machine.values()))
        groups = usage.ticks()
        rest = max(0, machine["busy"] - sum(groups.values()))
        for column, ticks in {**groups, "rest": rest, **machine}.items():
            if column in COLUMNS:
                shares[column] = 100 * ticks / total


def table(rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    """A Markdown table of each scenario's shares."""
    return [
        "| scenario | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
        *(
            f"| {name} | " + " | ".join(f"{shares.get(c, 0):.0f}%" for c in COLUMNS) + " |"
            for name, shares in rows
        ),
    ]
