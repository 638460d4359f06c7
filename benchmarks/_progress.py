"""Timestamped phase lines for the long GPU benchmarks: when a run is stopped before its figures, its log still says
where the time went (the 3b stages were stopped once after ~150 s without a line)."""

from __future__ import annotations

import sys
import time

STARTED = time.perf_counter()


def mark(what: str) -> None:
    """Print `[+  12.3 s] what` to stderr at once (the figures go to stdout)."""
    print(f"[+{time.perf_counter() - STARTED:7.1f} s] {what}", file=sys.stderr, flush=True)
