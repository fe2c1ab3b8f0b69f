"""Side-by-side timing of several implementations on the same input (interleaved, so machine noise
hits all of them alike)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_side_by_side(fns: dict[str, Callable[[], object]], *, batch: int, rounds: int = 7, warmup: int = 3,
                      round_seconds: float = 0.15) -> dict[str, dict]:
    """Median and spread of milliseconds per call, and images/s, for each function.

    Every round runs each function for about ``round_seconds`` in turn; the figure of a round is
    its mean time per call, and the median over rounds is reported with the min and max.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            calls, t0 = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= round_seconds:
                    break
            per_round[name].append(1e3 * elapsed / calls)
    out = {}
    for name, ms in per_round.items():
        med = statistics.median(ms)
        out[name] = {"ms_per_batch": round(med, 4), "ms_min": round(min(ms), 4), "ms_max": round(max(ms), 4),
                     "images_per_s": round(1e3 * batch / med, 1), "rounds": rounds}
    return out
