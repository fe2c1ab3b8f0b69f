"""What ``tailor export --fuse-budget`` buys: each task's ONNX graph exported with several budgets, timed side by side.

    python benchmarks/fuse_budget.py --model-dir runs/demo                  # budgets 0, 0.005 (the default), 0.02 and 1
    python benchmarks/fuse_budget.py --model-dir runs/demo --budgets 0,0.05 --batches 1,8,32
    python benchmarks/fuse_budget.py --model-dir /tmp/r34 --budgets 0,0.005,0.02 --batches 1,8 --images 8 --rounds 5

Copies the model dir's backbone and task packs once per budget into a temporary folder, exports each there with
that budget (the model dir itself is not touched), then times every (budget, task) graph through the runtime's
own task sessions (one shared weight store, 2 threads unless ``--threads``) in interleaved rounds and prints, per
task and batch, the median ms of each budget and its speedup over budget 0, the private bytes each graph copies,
and the batch norms left. Prints the CPU's flags first: compare figures within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def export_copy(model_dir: Path, out: Path, budget: float) -> dict:
    """``model_dir``'s backbone and packs exported into ``out`` with ``budget``; returns the ONNX manifest."""
    from tailorrt.export.exporter import ExportRequest, export_model

    for part in ("backbone", "tasks"):
        shutil.copytree(model_dir / part, out / part)
    return export_model(ExportRequest(model_dir=str(out), download=False, fuse_budget=budget))["onnx"].raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="A trained model dir (tailor train).")
    ap.add_argument("--budgets", default="0,0.005,0.02,1",
                    help="Comma-separated --fuse-budget values; the first is the reference.")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--images", type=int, default=400, help="Images per timing (calls of batch B: images / B).")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from tailorrt.cpu import cpu_summary
    from tailorrt.onnx_weight_store import WeightStore, task_session

    budgets = [float(b) for b in args.budgets.split(",")]
    print(f"CPU: {cpu_summary()}; {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="fuse-budget-") as tmp:
        manifests = {b: export_copy(args.model_dir, Path(tmp) / f"b{i}", b) for i, b in enumerate(budgets)}
        tasks = sorted(manifests[budgets[0]]["tasks"])
        store = WeightStore()
        sessions = {(b, t): task_session(f"{b}/{t}", Path(tmp) / f"b{i}" / "onnx" / f"{t}.onnx", store,
                                         threads=args.threads)
                    for i, b in enumerate(budgets) for t in tasks}
        size = manifests[budgets[0]]["tasks"][tasks[0]]["inputs"][0]["shape"][2]
        rows = []
        for batch in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            reps = max(1, args.images // batch)
            times: dict[tuple, list[float]] = {k: [] for k in sessions}
            for s in sessions.values():
                for _ in range(max(1, reps // 10)):
                    s.run(x)
            for _ in range(args.rounds):
                for k, s in sessions.items():
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        s.run(x)
                    times[k].append((time.perf_counter() - t0) / reps)
            for t in tasks:
                ref = statistics.median(times[(budgets[0], t)])
                for b in budgets:
                    entry = manifests[b]["tasks"][t]
                    ms = statistics.median(times[(b, t)])
                    rows.append({"task": t, "batch": batch, "budget": b, "ms": round(ms * 1e3, 4),
                                 "speedup": round(ref / ms, 3), "copied_bytes": entry["fused_copies"]["bytes"],
                                 "batch_norms": entry["ops"].get("BatchNormalization", 0)})
    print("| task | batch | --fuse-budget | ms per batch | speedup vs first | bytes copied | batch norms left |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['batch']} | {r['budget']:g} | {r['ms']:.3f} | {r['speedup']:.2f} | "
              f"{r['copied_bytes']:,} | {r['batch_norms']} |")
    print(json.dumps({"cpu": cpu_summary(), "rows": rows}))


if __name__ == "__main__":
    main()
