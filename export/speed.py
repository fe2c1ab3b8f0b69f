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
    its mean time per call (kept in order under ``ms_rounds``, for :func:`paired_ratio`), and the
    median over rounds is reported with the min and max.
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
                     "images_per_s": round(1e3 * batch / med, 1), "rounds": rounds,
                     "ms_rounds": [round(v, 4) for v in ms]}
    return out


def paired_ratio(res: dict[str, dict], fast: str, slow: str) -> dict[str, float]:
    """How many times faster ``fast`` ran than ``slow``, round by round: the median and quartiles of the
    per-round ratios ``slow ms / fast ms`` of a :func:`time_side_by_side` result.

    The two ran within a fraction of a second of each other in every round, so a slowdown of the
    machine that lasts a round or more divides out of the ratio, where it would not out of a ratio of
    medians taken over different rounds.
    """
    ratios = [s / f for f, s in zip(res[fast]["ms_rounds"], res[slow]["ms_rounds"], strict=True)]
    if len(ratios) == 1:
        return {"median": round(ratios[0], 3), "q1": round(ratios[0], 3), "q3": round(ratios[0], 3)}
    q1, med, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"median": round(med, 3), "q1": round(q1, 3), "q3": round(q3, 3)}
