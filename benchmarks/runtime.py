"""Memory and speed of the Runtime with several tasks loaded, against one plain ONNX Runtime session per task.

    python benchmarks/runtime.py memory --model-dir runs/demo
    python benchmarks/runtime.py speed --model-dir runs/demo
    python benchmarks/runtime.py synthetic --model-dir /tmp/r34   # a random ResNet34 + 3 pruned tasks, exported

Memory: each figure comes from a fresh process (resident set size after loading and one prediction
per task, minus the same process's size after its imports), so allocator leftovers of one setting
do not leak into the next. Speed: interleaved side-by-side rounds in one process (machine noise hits
both alike), median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MEASURE = r"""
import gc, json, sys
import numpy as np, psutil, onnxruntime as ort, torch
import tailorrt.runtime, tailorrt.export.sessions
from tailorrt import Runtime
from tailorrt.pack import ModelDir
mode, model_dir, tasks = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
proc = psutil.Process()
gc.collect(); base = proc.memory_info().rss
mdir = ModelDir(model_dir)
size = mdir.backbone_meta()["input_size"]
x = np.zeros((1, 3, size, size), np.float32)
steps = []
if mode == "separate":
    sessions = {}
    for t in tasks:
        sessions[t] = tailorrt.export.sessions.cpu_session(mdir.export_dir("onnx") / f"{t}.onnx")
        sessions[t].run(["logits"], {"input": x})
        gc.collect(); steps.append(proc.memory_info().rss - base)
else:
    rt = Runtime(model_dir, tasks=[], backend=mode)
    for t in tasks:
        rt.add_task(t)
        for u in rt.tasks:
            rt.logits(u, x)
        gc.collect(); steps.append(proc.memory_info().rss - base)
print(json.dumps({"base": base, "steps": steps}))
"""


def _measure(mode: str, model_dir: str, tasks: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, mode, model_dir, ",".join(tasks)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(model_dir: str) -> dict:
    from tailorrt.inventory import info_rows

    bmeta, rows = info_rows(model_dir)
    tasks = [r["task"] for r in rows][:3]
    packs = {r["task"]: r["pack_bytes"] for r in rows}
    mb = 1e6
    result = {"backbone_bytes": bmeta["bytes"], "packs": packs, "modes": {}}
    print(f"backbone {bmeta['name']} {bmeta['bytes'] / mb:.1f} MB; packs "
          + ", ".join(f"{t} {packs[t] / mb:.2f} MB" for t in tasks))
    print("| backend | 1 task | 2 tasks | 3 tasks | tasks 2+3 add | 1.2 x their packs | fresh process per K: 1 / 2 / 3 |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("torch", "onnx", "separate"):
        inc = _measure(mode, model_dir, tasks)["steps"]
        fresh = [_measure(mode, model_dir, tasks[:k])["steps"][-1] for k in range(1, len(tasks) + 1)]
        added = inc[-1] - inc[0]
        budget = 1.2 * sum(packs[t] for t in tasks[1:])
        result["modes"][mode] = {"incremental": inc, "fresh": fresh, "added_by_tasks_2_3": added,
                                 "budget_1_2x_packs": budget}
        label = {"separate": "one plain ORT session per task"}.get(mode, mode)
        print(f"| {label} | " + " | ".join(f"+{v / mb:.1f} MB" for v in inc) + f" | {added / mb:+.1f} MB | "
              f"{budget / mb:.1f} MB | " + " / ".join(f"{v / mb:.1f}" for v in fresh) + " |")
    return result


def speed(model_dir: str, batches: tuple[int, ...]) -> dict:
    import numpy as np

    from tailorrt import Runtime
    from tailorrt.export.sessions import cpu_session
    from tailorrt.export.speed import time_side_by_side

    rt = Runtime(model_dir, backend="onnx")
    tasks = rt.tasks[:3]
    for t in rt.tasks[3:]:
        rt.remove_task(t)
    size = rt.backbone_meta["input_size"]
    result = {}
    print(f"| task | batch | plain session img/s | runtime ({len(tasks)} tasks, one session) img/s | ratio |")
    print("|---|---|---|---|---|")
    for t in tasks:
        plain = cpu_session(rt.model_dir.export_dir("onnx") / f"{t}.onnx")
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
            res = time_side_by_side({"plain": lambda: plain.run(["logits"], {"input": x}),
                                     "runtime": lambda: rt.logits(t, x)}, batch=b)
            ratio = res["runtime"]["images_per_s"] / res["plain"]["images_per_s"]
            result[f"{t}/batch_{b}"] = {**res, "ratio": round(ratio, 3)}
            print(f"| {t} | {b} | {res['plain']['images_per_s']:.1f} | {res['runtime']['images_per_s']:.1f} | "
                  f"{ratio:.2f} |")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["memory", "speed", "synthetic"])
    ap.add_argument("--model-dir", default="runs/demo")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--out", help="Also write the figures as JSON here.")
    args = ap.parse_args()
    if args.what == "synthetic":
        from tailorrt.export.exporter import ExportRequest, export_model
        from tailorrt.synthetic import make_model_dir

        make_model_dir(args.model_dir, backbone="resnet34", tasks=3)
        export_model(ExportRequest(model_dir=args.model_dir, parity_images=8), report=print)
        return
    if args.what == "memory":
        result = memory(args.model_dir)
    else:
        result = speed(args.model_dir, tuple(int(b) for b in args.batches.split(",")))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
