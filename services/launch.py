"""Running gradecast's services as processes of their own, as users run them: the command,
the wait until one is ready, and the stop, shared by `gradecast dev`, the tests and the
bench (`gradecast dev` stops its asyncio processes itself)."""

import subprocess
import sys
import time
from collections.abc import Callable
from signal import SIGTERM

import httpx

GRADECAST = [sys.executable, "-m", "services.cli"]
POLL_SECONDS = 0.2


def wait_ready(url: str, exit_code: Callable[[], int | None], seconds: float) -> str:
    """Asks `url` (a /ready or /health endpoint) until it answers 200: "ready". Or
    "exited (N)" as soon as the process has ended, or "not ready" after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (code := exit_code()) is not None:
            return f"exited ({code})"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return "ready"
        except httpx.TransportError:
            pass
        time.sleep(POLL_SECONDS)
    return "not ready"


def stop(process: subprocess.Popen[bytes], seconds: float, sig: int = SIGTERM) -> None:
    """Ends a process started here by its own pid: `sig`, then a kill if it lingers."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
