"""Memory and speed of the Runtime with several tasks loaded, against one plain ONNX Runtime session per task.

    python benchmarks/runtime.py memory --model-dir runs/demo
    python benchmarks/runtime.py speed --model-dir runs/demo
    python benchmarks/runtime.py agree --model-dir runs/demo   # torch vs onnx on every task's test split
    python benchmarks/runtime.py synthetic --model-dir /tmp/r34 --tasks 6  # random ResNet34 + 6 pruned tasks, exported
    python benchmarks/runtime.py synthetic --model-dir /tmp/l0 --tasks 6 --backbone efficientnet-lite0 --pretrained
    python benchmarks/runtime.py memory --model-dir /tmp/r34 --tasks 6

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
import tailorrt.runtime, tailorrt.export.cpu_sessions
from tailorrt import Runtime
from tailorrt.pack import ModelDir
mode, model_dir, tasks, at_once = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4] == "1"
proc = psutil.Process()
gc.collect(); base = proc.memory_info().rss
mdir = ModelDir(model_dir)
size = mdir.backbone_record().input_size
x = np.zeros((1, 3, size, size), np.float32)
steps = []
if mode == "separate":
    sessions = {}
    for t in tasks:
        sessions[t] = tailorrt.export.cpu_sessions.cpu_session(mdir.export_dir("onnx") / f"{t}.onnx")
        sessions[t].run(["logits"], {"input": x})
        gc.collect(); steps.append(proc.memory_info().rss - base)
else:
    rt = Runtime(model_dir, tasks=[], backend=mode.split("-")[0], share_weights=not mode.endswith("-fused"),
                 precision="int8" if "-int8" in mode else "fp32")
    def add(group):
        rt.add_tasks(group)  # one session build for the whole group
        for u in rt.tasks:
            rt.logits(u, x)
        gc.collect(); steps.append(proc.memory_info().rss - base)
    for group in [tasks] if at_once else [[t] for t in tasks]:
        add(group)
    for _ in range(0 if at_once else CHURN):  # remove and add the last task again: does the cost settle?
        rt.remove_task(tasks[-1])
        add([tasks[-1]])
print(json.dumps({"base": base, "steps": steps}))
""".replace("CHURN", "5")


def _measure(mode: str, model_dir: str, tasks: list[str], at_once: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, mode, model_dir, ",".join(tasks), str(int(at_once))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(model_dir: str, max_tasks: int) -> dict:
    from tailorrt.inventory import info_rows

    backbone, rows = info_rows(model_dir)
    tasks = [r["task"] for r in rows][:max_tasks]
    packs = {r["task"]: r["pack_bytes"] for r in rows}
    mb = 1e6
    result = {"backbone_bytes": backbone.bytes, "packs": packs, "modes": {}}
    print(f"backbone {backbone.name} {backbone.bytes / mb:.1f} MB; packs "
          + ", ".join(f"{t} {packs[t] / mb:.2f} MB" for t in tasks))
    budget = 1.2 * sum(packs[t] for t in tasks[1:])
    k = len(tasks)
    print("| backend | how the tasks are loaded | " + " | ".join(f"{i} task{'s' * (i > 1)}" for i in range(1, k + 1))
          + f" | tasks 2..{k} add | 1.2 x their packs | beyond that |")
    print("|---|---|" + "---|" * (k + 3))
    churned = {}
    for mode in ("torch", "onnx", "onnx-fused", "separate"):
        ways = {"together": [_measure(mode, model_dir, tasks[:k], at_once=True)["steps"][-1]
                             for k in range(1, len(tasks) + 1)]}
        if mode in ("torch", "onnx"):
            steps = _measure(mode, model_dir, tasks)["steps"]
            ways["one by one"], churned[mode] = steps[:len(tasks)], steps[len(tasks):]
        result["modes"][mode] = {}
        for way, steps in ways.items():
            added = steps[-1] - steps[0]
            result["modes"][mode][way] = {"rss_added": steps, "added_after_task_1": added,
                                          "budget_1_2x_packs": budget, "beyond_budget": added - budget}
            label = {"separate": "one plain ORT session per task",
                     "onnx-fused": "onnx --fuse-weights"}.get(mode, mode)
            how = {"together": "fresh process per K, all K at once", "one by one": "added to a running Runtime"}
            print(f"| {label} | {how[way]} | " + " | ".join(f"+{v / mb:.1f} MB" for v in steps)
                  + f" | {added / mb:+.1f} MB | {budget / mb:.1f} MB | {(added - budget) / mb:+.1f} MB |")
    for mode, steps in churned.items():
        result["modes"][mode]["churn"] = steps
        print(f"{mode}: the last task removed and added again {len(steps)} times, resident memory after each: "
              + ", ".join(f"+{v / mb:.1f}" for v in steps) + " MB")
    return result


def speed(model_dir: str, batches: tuple[int, ...], tasks: int = 3, rounds: int = 11) -> dict:
    """Each task through the Runtime (shared weights; and with ``--fuse-weights``) against one plain session of
    its graph, in interleaved rounds; on an NCHWc CPU also the shared session without the rewrite of the task's own
    norms (:mod:`tailorrt.onnx_rewrite`), as it ran before it."""
    from unittest import mock

    import numpy as np
    import onnxruntime as ort

    from tailorrt import Runtime, onnx_rewrite
    from tailorrt.cpu import cpu_summary
    from tailorrt.export.speed import paired_ratio, time_side_by_side
    from tailorrt.onnx_weight_store import session_options
    from tailorrt.pack import ModelDir

    names = ModelDir(model_dir).task_names()[:tasks]
    runtimes = {"shared": Runtime(model_dir, tasks=names, backend="onnx"),
                "fused": Runtime(model_dir, tasks=names, backend="onnx", share_weights=False)}
    if onnx_rewrite.nchwc_cpu():
        with mock.patch.object(onnx_rewrite, "nchwc_cpu", return_value=False):
            runtimes["norms as BatchNormalization"] = Runtime(model_dir, tasks=names, backend="onnx")
    shared = runtimes["shared"]
    size = shared.backbone_record.input_size
    result = {}
    print(f"CPU: {cpu_summary()}; {shared.backend.threads} threads; {rounds} rounds")
    print("| task | batch | plain session img/s | " + " | ".join(
        f"runtime, {len(names)} tasks, {k}: img/s (ratio)" for k in runtimes) + " |")
    print("|---|---|---|" + "---|" * len(runtimes))
    for t in names:
        # default optimisation, same threads as the runtime's sessions: a session that spins when idle would take
        # the cores from whichever contender runs next in the interleaved rounds
        plain = ort.InferenceSession(str(shared.model_dir.export_dir("onnx") / f"{t}.onnx"),
                                     session_options(shared.backend.threads), providers=["CPUExecutionProvider"])
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
            fns = {"plain": lambda: plain.run(["logits"], {"input": x})}
            fns.update({k: (lambda rt=rt: rt.logits(t, x)) for k, rt in runtimes.items()})
            res = time_side_by_side(fns, batch=b, rounds=rounds)
            ratios = {k: paired_ratio(res, k, "plain") for k in runtimes}
            result[f"{t}/batch_{b}"] = {**res, "ratio": {k: v["median"] for k, v in ratios.items()},
                                        "ratio_quartiles": {k: [v["q1"], v["q3"]] for k, v in ratios.items()}}
            print(f"| {t} | {b} | {res['plain']['images_per_s']:.1f} | "
                  + " | ".join(f"{res[k]['images_per_s']:.1f} ({r['median']:.2f}, {r['q1']:.2f}-{r['q3']:.2f})"
                               for k, r in ratios.items()) + " |", flush=True)
    return result


def agree(model_dir: str) -> dict:
    """torch and onnx (shared and fused) logits on every task's full test split."""
    import numpy as np

    from tailorrt import Runtime
    from tailorrt.training.datasets import load_task

    rts = {"torch": Runtime(model_dir, backend="torch"), "onnx": Runtime(model_dir, backend="onnx"),
           "onnx --fuse-weights": Runtime(model_dir, backend="onnx", share_weights=False)}
    ref = rts["torch"]
    result = {}
    print("| task | test images | backend | max abs logit diff vs torch | top-1 agreement |")
    print("|---|---|---|---|---|")
    for task in ref.tasks:
        info = ref.task(task)
        data = load_task(info.record.data_spec, data_dir=Path("data"), preprocess=info.preprocess)
        x = np.stack([data.test[i][0].numpy() for i in range(len(data.test))])
        a = ref.logits(task, x)
        for name in ("onnx", "onnx --fuse-weights"):
            b = rts[name].logits(task, x)
            diff, top1 = float(np.abs(a - b).max()), float((a.argmax(1) == b.argmax(1)).mean())
            result[f"{task}/{name}"] = {"images": len(x), "max_abs_diff": diff, "top1_agreement": top1}
            print(f"| {task} | {len(x)} | {name} | {diff:.1e} | {100 * top1:.2f}% |")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["memory", "speed", "agree", "synthetic"])
    ap.add_argument("--model-dir", default="runs/demo")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--tasks", type=int, default=3, help="synthetic: how many tasks to make; memory and speed: how "
                    "many to load")
    ap.add_argument("--rounds", type=int, default=11, help="speed: interleaved rounds per task and batch.")
    ap.add_argument("--backbone", default="resnet34", help="synthetic: the backbone (random weights).")
    ap.add_argument("--pretrained", action="store_true", help="synthetic: the backbone's pretrained weights (where "
                    "they are installed or downloadable) instead of random ones.")
    ap.add_argument("--out", help="Also write the figures as JSON here.")
    args = ap.parse_args()
    if args.what == "synthetic":
        from tailorrt.export.exporter import ExportRequest, export_model
        from tailorrt.training.synthetic import make_model_dir

        make_model_dir(args.model_dir, backbone=args.backbone, tasks=args.tasks, pretrained=args.pretrained)
        export_model(ExportRequest(model_dir=args.model_dir, parity_images=8), report=print)
        return
    if args.what == "memory":
        result = memory(args.model_dir, args.tasks)
    elif args.what == "agree":
        result = agree(args.model_dir)
    else:
        result = speed(args.model_dir, tuple(int(b) for b in args.batches.split(",")), args.tasks, args.rounds)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
