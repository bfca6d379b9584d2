"""Token buckets, one per key (a publisher key, a client address), in this process."""

import time
from collections import OrderedDict

MAX_BUCKETS = 100_000  # the least recently used are forgotten past this


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: int) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def acquire(self, key: str) -> float:
        """0 when the call may go ahead; otherwise how many seconds until it may."""
        now = time.monotonic()
        tokens, then = self.buckets.pop(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
        if len(self.buckets) > MAX_BUCKETS:
            self.buckets.popitem(last=False)
        return wait
