"""A bounded load test of ``tailor serve`` on loopback, every answer checked against ``Runtime.predict``.

    python benchmarks/load_test.py --model-dir runs/demo --requests 2000 --clients 16

Starts the server as a subprocess, sends PNG-encoded test images of the built-in tasks, mixed at
random over the tasks, from ``--clients`` threads over keep-alive connections (``POST
/v1/tasks/{task}:predict``), and compares each answer (label and score) with an in-process
``Runtime`` on the same image. Prints throughput, latency percentiles, errors and mismatches, and
the batch sizes the server reports in ``/metrics``.
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.request
from pathlib import Path

from tailorrt import Runtime
from tailorrt.serving.local import local_server, send_load
from tailorrt.tools.serve_demo import request_plan
from tailorrt.training.world import BUILTIN_TASKS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="runs/demo")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--images-per-task", type=int, default=100)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--out", help="Write the figures as JSON here.")
    args = ap.parse_args()

    rt = Runtime(args.model_dir, backend=args.backend)
    tasks = [t for t in rt.tasks if t in BUILTIN_TASKS]
    plan = request_plan(rt, tasks, args.requests, args.images_per_task)

    with local_server(args.model_dir, "--backend", args.backend, "--max-batch", str(args.max_batch),
                      "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "4096") as url:
        load = send_load(url, plan, args.clients)
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            metrics = r.read().decode()

    batches = {t: _mean_batch(metrics, t) for t in tasks}
    result = {**load.summary(), "clients": args.clients, "backend": args.backend, "tasks": tasks,
              "mean_batch": batches, "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms}
    print(json.dumps(result, indent=1))
    for e in load.errors[:5]:
        print("error:", e)
    for m in load.mismatches[:5]:
        print("mismatch:", m)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if load.errors or load.mismatches:
        raise SystemExit(1)


def _mean_batch(metrics: str, task: str) -> float | None:
    total = re.search(rf'tailorrt_batch_size_sum{{task="{re.escape(task)}"}} ([0-9.e+]+)', metrics)
    count = re.search(rf'tailorrt_batch_size_count{{task="{re.escape(task)}"}} ([0-9.e+]+)', metrics)
    if not (total and count) or float(count.group(1)) == 0:
        return None
    return round(float(total.group(1)) / float(count.group(1)), 2)


if __name__ == "__main__":
    main()
