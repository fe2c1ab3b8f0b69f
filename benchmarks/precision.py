"""fp32, int8 and bf16 side by side: images/s per engine, accuracy against fp32, and what tasks 2..K add to memory.

    tailor export --model-dir runs/demo --precision int8            # int8 graphs, accuracy-checked
    python benchmarks/precision.py --model-dir runs/demo
    python benchmarks/runtime.py synthetic --model-dir /tmp/r34 --tasks 6
    tailor export --model-dir /tmp/r34 --precision int8 --max-precision-drop 100   # random tasks: accuracy meaningless
    python benchmarks/precision.py --model-dir /tmp/r34 --tasks 6

Engines, each with the same threads, timed in interleaved rounds in one process (median):
- ``onnx fp32``: today's Runtime (one copy of the universal weights);
- ``onnx int8``: the Runtime at ``precision="int8"``: one copy of the int8 universal weights for all tasks,
  read as stored (ONNX Runtime's pre-packing off);
- ``onnx int8 --fuse-weights``: ``share_weights=False``: each task's session pre-packs its own copy of its int8
  weights for ONNX Runtime's fast kernels;
- ``torch fp32`` and ``torch bf16``: the torch backend, and its module under ``torch.autocast(bfloat16)``
  (emulated, and timed at batch 1 only, on a CPU without AVX512-BF16 or AMX);
- ``openvino fp32`` and ``openvino int8``: OpenVINO (if installed: ``pip install openvino``) compiling the same
  fp32 and int8 ONNX graphs, one compiled model per task.

Memory: fresh processes load the tasks one by one into a Runtime (fp32, int8, int8 --fuse-weights) and report
the resident memory after each (``benchmarks/runtime.py``'s measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from runtime import _measure


def engines(model_dir: str, task: str, threads: int, bf16_native: bool) -> dict:
    """Name -> (function of a batch, batches it is timed at)."""
    import torch

    from tailorrt import Runtime
    from tailorrt.export.low_precision import bf16_logits

    fp32 = Runtime(model_dir, tasks=[task], backend="onnx", threads=threads)
    int8 = Runtime(model_dir, tasks=[task], backend="onnx", threads=threads, precision="int8")
    int8_own = Runtime(model_dir, tasks=[task], backend="onnx", threads=threads, precision="int8", share_weights=False)
    torch_rt = Runtime(model_dir, tasks=[task], backend="torch")
    module = torch_rt.backend.models[task]
    out = {"onnx fp32": (lambda x: fp32.logits(task, x), None), "onnx int8": (lambda x: int8.logits(task, x), None),
           "onnx int8 --fuse-weights": (lambda x: int8_own.logits(task, x), None),
           "torch fp32": (lambda x: torch_rt.logits(task, x), None),
           "torch bf16": (lambda x: bf16_logits(module, x), None if bf16_native else (1,))}
    torch.set_num_threads(threads)
    try:
        import openvino as ov
    except ImportError:
        print("openvino is not installed (pip install openvino): its rows are left out")
        return out
    core = ov.Core()
    for name, folder in (("openvino fp32", "onnx"), ("openvino int8", "onnx-int8")):
        compiled = core.compile_model(str(Path(model_dir) / folder / f"{task}.onnx"), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        out[name] = (lambda x, r=request, c=compiled: r.infer({0: x})[c.output("logits")], None)
    return out


def speed(model_dir: str, task: str, batches: list[int], rounds: int, threads: int, bf16_native: bool) -> dict:
    from tailorrt.export.speed import paired_ratio, time_side_by_side
    from tailorrt.pack import ModelDir

    size = ModelDir(model_dir).task_record(task).preprocess.size
    runs = engines(model_dir, task, threads, bf16_native)
    result = {}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
        fns = {k: (lambda f=f, x=x: f(x)) for k, (f, only) in runs.items() if only is None or b in only}
        res = time_side_by_side(fns, batch=b, rounds=rounds, warmup=1)
        for k, v in res.items():
            v["vs_onnx_fp32"] = paired_ratio(res, k, "onnx fp32")["median"]
        result[b] = res
    return result


def accuracy(model_dir: str) -> dict:
    from tailorrt.pack import ModelDir

    record = ModelDir(model_dir).export_record("onnx-int8")
    return {t: e.accuracy_check.to_json() for t, e in record.tasks.items()}


def memory(model_dir: str, tasks: list[str]) -> dict:
    out = {}
    for mode in ("onnx", "onnx-int8", "onnx-int8-fused"):
        steps = _measure(mode, model_dir, tasks)["steps"][:len(tasks)]
        out[mode] = {"rss_added": steps, "tasks_2_on_add": steps[-1] - steps[0]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="runs/demo")
    ap.add_argument("--task", help="The task timed (default: the model dir's first).")
    ap.add_argument("--tasks", type=int, default=3, help="How many tasks the memory measurement loads.")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", help="Also write the figures as JSON here.")
    args = ap.parse_args()
    import torch

    from tailorrt.cpu import BF16_FLAGS, cpu_flags, cpu_summary
    from tailorrt.pack import ModelDir

    names = ModelDir(args.model_dir).task_names()
    task, threads = args.task or names[0], args.threads or torch.get_num_threads()
    native = any(f in cpu_flags() for f in BF16_FLAGS)
    print(f"CPU: {cpu_summary()}; {threads} threads; task {task}")
    res = speed(args.model_dir, task, [int(b) for b in args.batches.split(",")], args.rounds, threads, native)
    print("| engine | " + " | ".join(f"batch {b}: img/s (x onnx fp32)" for b in res) + " |")
    print("|---|" + "---|" * len(res))
    for name in res[min(res)]:
        cells = [f"{r[name]['images_per_s']:.1f} ({r[name]['vs_onnx_fp32']:.2f}x)" if name in r else "not timed"
                 for r in res.values()]
        print(f"| {name}{'' if native or name != 'torch bf16' else ' (emulated)'} | " + " | ".join(cells) + " |")
    acc = accuracy(args.model_dir)
    print("\n| task | test images | fp32 | int8 | drop (points) | top-1 agreement |\n|---|---|---|---|---|---|")
    for t, a in acc.items():
        print(f"| {t} | {a['images']} | {a['fp32_accuracy']:.2f}% | {a['accuracy']:.2f}% | {a['drop_points']:+.2f} "
              f"| {100 * a['top1_agreement']:.2f}% |")
    mem = memory(args.model_dir, names[:args.tasks])
    print(f"\n| runtime | resident memory after tasks 1..{args.tasks} | tasks 2..{args.tasks} add |\n|---|---|---|")
    for mode, m in mem.items():
        print(f"| {mode} | " + ", ".join(f"+{v / 1e6:.1f}" for v in m["rss_added"]) + f" MB | "
              f"{m['tasks_2_on_add'] / 1e6:+.1f} MB |")
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu_summary(), "threads": threads, "task": task, "speed": res,
                                              "accuracy": acc, "memory": mem}, indent=1))


if __name__ == "__main__":
    main()
