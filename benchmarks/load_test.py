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
import http.client
import json
import random
import re
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from tailorrt import Runtime
from tailorrt.serving.local import local_server, png_bytes
from tailorrt.world import BUILTIN_TASKS, generate


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
    pool = []  # (task, png, expected label, expected score)
    for t in tasks:
        images, _ = generate(BUILTIN_TASKS[t], "test", rt.task(t).preprocess.size)
        pngs = [png_bytes(a) for a in images[: args.images_per_task]]
        for png, p in zip(pngs, rt.predict(t, pngs)):
            pool.append((t, png, p.label, p.scores[0]))
    rng = random.Random(0)
    plan = [rng.choice(pool) for _ in range(args.requests)]

    with local_server(args.model_dir, "--backend", args.backend, "--max-batch", str(args.max_batch),
                      "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "4096") as url:
        port = int(url.rsplit(":", 1)[1])
        latencies, errors, mismatches = [], [], []
        lock, cursor = threading.Lock(), iter(range(len(plan)))

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    break
                task, png, label, score = plan[i]
                t0 = time.perf_counter()
                try:
                    conn.request("POST", f"/v1/tasks/{task}:predict?top_k=1", body=png,
                                 headers={"Content-Type": "image/png"})
                    resp = conn.getresponse()
                    body = resp.read()
                except OSError as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if resp.status != 200:
                        errors.append(f"{resp.status}: {body[:200]!r}")
                        continue
                    got = json.loads(body)
                    if got["label"] != label or abs(got["top_k"][0]["score"] - score) > 1e-5:
                        mismatches.append((task, label, got["label"], score, got["top_k"][0]["score"]))
            conn.close()

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - start
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            metrics = r.read().decode()

    lat = np.array(latencies) * 1e3
    batches = {t: _mean_batch(metrics, t) for t in tasks}
    result = {"requests": len(plan), "clients": args.clients, "backend": args.backend, "tasks": tasks,
              "seconds": round(wall, 2), "requests_per_s": round(len(plan) / wall, 1),
              "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                             "p99": round(float(np.percentile(lat, 99)), 2), "max": round(float(lat.max()), 2)},
              "errors": len(errors), "mismatches": len(mismatches), "mean_batch": batches,
              "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms}
    print(json.dumps(result, indent=1))
    for e in errors[:5]:
        print("error:", e)
    for m in mismatches[:5]:
        print("mismatch:", m)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if errors or mismatches:
        raise SystemExit(1)


def _mean_batch(metrics: str, task: str) -> float | None:
    total = re.search(rf'tailorrt_batch_size_sum{{task="{re.escape(task)}"}} ([0-9.e+]+)', metrics)
    count = re.search(rf'tailorrt_batch_size_count{{task="{re.escape(task)}"}} ([0-9.e+]+)', metrics)
    if not (total and count) or float(count.group(1)) == 0:
        return None
    return round(float(total.group(1)) / float(count.group(1)), 2)


if __name__ == "__main__":
    main()
