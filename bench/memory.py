"""Peak resident memory of one call on the CPU, sampled from /proc/self/statm every 2 ms.

`ru_maxrss` is not used: it is a high-water mark for the whole process (and a forked child inherits its
parent's), so it cannot measure one call after a warm-up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Run `fn` once -> (seconds, peak resident memory above the start in MB, its result)."""
    base = rss_bytes()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    peak = max(peak, rss_bytes())
    return seconds, (peak - base) / 2**20, out
