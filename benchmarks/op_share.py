"""Where a task's time goes against its teacher's at one batch size: ONNX Runtime's profiler, by operator type.

    python benchmarks/op_share.py --model-dir runs/demo                  # batch 32, every task
    python benchmarks/op_share.py --model-dir runs/demo --batch 1 --tasks synth-digits

``tailor bench`` profiles at its smallest batch; this profiles at the batch where the FLOP ratio should turn into
speed. For each task it writes the per-task model as ``tailor bench`` does (the teacher, or a same-architecture
stand-in), profiles it and the task's graph as the Runtime runs it (shared weights, the task's own batch norms)
on the same input, and prints the µs per call of each, the share of the task's call spent in max-pools (they do
no multiply-accumulate, so the FLOP count leaves them out; a teacher has none), and the speedup over the FLOP
ratio the profile gives with and without them. The profiler adds a cost per node, and the task has more nodes:
read the figures as a breakdown, and take speed itself from ``tailor bench``. Prints the CPU first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="A trained and exported model dir.")
    ap.add_argument("--tasks", default="", help="Comma-separated tasks (default: every task).")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--calls", type=int, default=100, help="Profiled calls of each graph per round (after 10 warm-up "
                    "calls).")
    ap.add_argument("--rounds", type=int, default=5, help="Rounds, teacher and task in turn; medians are printed.")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from tailorrt.cpu import cpu_summary
    from tailorrt.runtime import Runtime
    from tailorrt.tools.bench import per_task_model
    from tailorrt.tools.onnx_profile import op_profile
    from tailorrt.training.packs import TrainingDir

    mdir = TrainingDir(args.model_dir)
    tasks = [t for t in args.tasks.split(",") if t] or mdir.task_names()
    backbone, _ = mdir.load_backbone()
    size = backbone.spec.input_size
    rt = Runtime(str(mdir.root), tasks=tasks, backend="onnx", threads=args.threads)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
    print(f"CPU: {cpu_summary()}; {args.threads} threads; batch {args.batch}, {args.calls} profiled calls")
    print("| task | FLOP ratio | teacher µs | task µs | task max-pools µs (share) | speedup / FLOP ratio | "
          "the same without the max-pools |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tailorrt-op-share-") as tmp:
        for t in tasks:
            model = per_task_model(mdir, t, backbone, Path(tmp))
            flop_ratio = model.flops / mdir.task_record(t).metrics.flops
            kw = {"threads": args.threads, "calls": args.calls, "warmup": 10}
            teacher_us, task_us, pools_us = [], [], []
            for _ in range(args.rounds):
                teacher_us.append(op_profile(model.path, x, fuse=True, **kw)["call_us"])
                task = op_profile(rt.backend.graph_file(t), x, fuse=False, **kw)
                task_us.append(task["call_us"])
                pools_us.append(task["kernel_us"].get("MaxPool", 0.0))
            teacher, call, pools = (statistics.median(v) for v in (teacher_us, task_us, pools_us))
            print(f"| {t} | {flop_ratio:.2f} | {teacher:.0f} | {call:.0f} | {pools:.0f} ({pools / call:.0%}) | "
                  f"{teacher / call / flop_ratio:.2f} | {teacher / (call - pools) / flop_ratio:.2f} |")


if __name__ == "__main__":
    main()
