"""``tailor train --method auto``: pick the method for a task under a budget the user states.

Every candidate (each registered family's :attr:`~tailorrt.training.methods.base.Method.candidates`, or the user's list)
is trained on a short schedule (every phase's epochs scaled by :data:`SHORT`, at least one each) and measured
on the task's validation split: accuracy, pack bytes, FLOPs. A candidate meets the budget when its pack and
FLOPs are within ``--max-pack-mb`` and ``--max-mflops``, its validation accuracy is within ``--max-drop``
points of the best candidate's, and its own training did not find that it falls short of what it was held to
(``metrics.shortfall``: NetTailor's candidates, or its student, under the teacher beyond its tolerance). The
smallest pack among those wins (ties: the more accurate), and is then trained again on the full schedule into the
task's pack; when the winner's own check could not tell whether it matches what it was held to (``metrics.caveat``:
NetTailor's validation split too small for its tolerance), the reason says so. ``task.json`` records every
candidate's figures, why the winner won, and the seconds spent choosing. A budget nothing meets is a one-line error
naming the candidate closest to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from safetensors.torch import save

from tailorrt.errors import ConfigError
from tailorrt.records import AutoCandidate, AutoChoice, Budget
from tailorrt.training import methods
from tailorrt.training.methods.base import Trained

NAME = "auto"
SHORT = 1 / 3  # the candidates' schedule, as a fraction of the full one


def default_candidates(block: str | None = None) -> list[str]:
    """The methods ``--method auto`` tries when none are given: every family's candidates (those that run on
    ``block``, given a block family)."""
    return [name for m in methods.families() if block is None or block in m.blocks for name in m.candidates]


def pack_bytes(state: dict[str, torch.Tensor]) -> int:
    """The bytes of a pack holding ``state`` (its safetensors file, as written)."""
    return len(save({k: v.contiguous() for k, v in state.items()}))


# a candidate's name -> what its short training left, and its validation accuracy
TrainFn = Callable[[str], tuple[Trained, float]]


def choose(candidates: list[str], budget: Budget, train: TrainFn, report: Callable[[str], None] = lambda _m: None
           ) -> AutoChoice:
    """Train every candidate on the short schedule through ``train`` and pick one; returns the record that goes into
    ``task.json`` as ``auto`` (with ``winner``), or raises ConfigError naming the closest candidate."""
    if not candidates:
        raise ConfigError("--method auto needs at least one candidate method")
    rows = []
    for name in dict.fromkeys(candidates):
        t0 = time.perf_counter()
        trained, val = train(name)
        rows.append({"method": name, "val_accuracy": round(val, 3), "test_accuracy": trained.metrics["accuracy"],
                     "pack_bytes": pack_bytes(trained.net.task_state()), "flops": int(trained.metrics["flops"]),
                     "seconds": round(time.perf_counter() - t0, 2)})
        for key in ("shortfall", "caveat"):  # the method's own verdict: it could not match (or show that it
            if trained.metrics.get(key):     # matches) what it was held to
                rows[-1][key] = trained.metrics[key]
        report(f"auto: {name} val {val:.2f}%, pack {rows[-1]['pack_bytes'] / 1e6:.3f} MB, "
               f"{rows[-1]['flops'] / 1e6:.1f} MFLOPs, {rows[-1]['seconds']:.0f} s")
    best = max(r["val_accuracy"] for r in rows)
    for r in rows:
        r["misses"] = _misses(r, budget, best)
    fits = [r for r in rows if not r["misses"]]
    if not fits:
        closest = min(rows, key=lambda r: _excess(r, budget, best))
        raise ConfigError(f"no candidate meets the budget; the closest is {closest['method']} "
                          f"({'; '.join(closest['misses'])})")
    winner = min(fits, key=lambda r: (r["pack_bytes"], -r["val_accuracy"]))
    smaller = [r["method"] for r in rows if r["pack_bytes"] < winner["pack_bytes"]]
    reason = (f"smallest pack ({winner['pack_bytes'] / 1e6:.3f} MB) among the {len(fits)} of {len(rows)} candidates "
              f"within the budget; val {winner['val_accuracy']:.2f}% against the best {best:.2f}%")
    if smaller:
        reason += f"; smaller but outside it: {', '.join(smaller)}"
    if winner.get("caveat"):  # within the budget as measured, but its own split could not tell
        reason += f"; its own check: {winner['caveat']}"
    return AutoChoice(tuple(AutoCandidate(**{**r, "misses": tuple(r["misses"])}) for r in rows), winner["method"],
                      reason, SHORT, round(sum(r["seconds"] for r in rows), 2), budget=budget, best_val_accuracy=best)


def _misses(row: dict, budget: Budget, best: float) -> list[str]:
    """What of the budget a candidate misses, in words (empty: it meets it)."""
    out = []
    if budget.max_pack_mb is not None and row["pack_bytes"] > budget.max_pack_mb * 1e6:
        out.append(f"pack {row['pack_bytes'] / 1e6:.3f} MB > {budget.max_pack_mb:g} MB")
    if budget.max_mflops is not None and row["flops"] > budget.max_mflops * 1e6:
        out.append(f"{row['flops'] / 1e6:.1f} MFLOPs > {budget.max_mflops:g}")
    if row.get("shortfall"):
        out.append(row["shortfall"])
    if row["val_accuracy"] < best - budget.max_drop:
        out.append(f"val {row['val_accuracy']:.2f}% is {best - row['val_accuracy']:.2f} points below the best "
                   f"(--max-drop {budget.max_drop:g})")
    return out


def _excess(row: dict, budget: Budget, best: float) -> float:
    """How far outside the budget a candidate is: the sum of its relative excesses."""
    total = max(0.0, best - budget.max_drop - row["val_accuracy"]) / 100
    if budget.max_pack_mb is not None:
        total += max(0.0, row["pack_bytes"] / (budget.max_pack_mb * 1e6 + 1) - 1)
    if budget.max_mflops is not None:
        total += max(0.0, row["flops"] / (budget.max_mflops * 1e6 + 1) - 1)
    return total
