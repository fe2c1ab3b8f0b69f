"""More than one process, side by side in one run: ``tailor serve`` against the Ray Serve deployment with 1 and 2
worker replicas (requests/s, p50/p99, the memory of each replica), and ``tailor train --nproc 1`` against
``--nproc 2`` (seconds per epoch of each phase).

    python benchmarks/scale_out.py --model-dir runs/demo --requests 1500 --clients 16

Every answer is checked against an in-process ``Runtime``. The same PNG requests, mixed over the built-in tasks,
go to each server in turn; each server starts fresh, gets a warm-up, then the measured run. Memory is the
resident set of each serving process (the Ray replicas found by their process title), and of Ray's own
processes (GCS, raylet, controller, proxy, ingress) in total. Training runs ``--train-task`` on a fresh model
directory with short schedules (``--train-args``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from tailorrt import Runtime
from tailorrt.serving.local import send_load, serve_process
from tailorrt.tools.serve_demo import request_plan
from tailorrt.training.world import BUILTIN_TASKS

RAY_PROCESS = ("ray::", "gcs_server", "raylet", "dashboard", "ray/_private", "log_monitor", "monitor.py")


def _rss_mb(p: psutil.Process) -> float:
    try:
        return p.memory_info().rss / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def _ray_memory() -> dict:
    """Resident MB of each worker replica, and of Ray's other processes together."""
    replicas, other = [], 0.0
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ServeReplica:tailorrt:TaskWorker" in cmd:
            replicas.append(round(_rss_mb(p)))
        elif any(k in cmd for k in RAY_PROCESS):
            other += _rss_mb(p)
    return {"replicas_mb": sorted(replicas), "ray_other_mb": round(other)}


def _serve(model_dir: str, plan: list, clients: int, warmup: int, args: list[str]) -> dict:
    with serve_process(model_dir, *args, timeout=300) as (url, proc):
        send_load(url, plan[:warmup], clients)  # every task loaded (on every replica that gets it), caches warm
        alone = send_load(url, plan[:warmup], 1).summary()  # one request at a time: the cost of each hop
        load = send_load(url, plan, clients)
        row = {**load.summary(), "one_client_p50_ms": alone["latency_ms"]["p50"],
               "live_p50_ms": _p50(f"{url}/v2/health/live"), "ready_p50_ms": _p50(f"{url}/v2/health/ready")}
        if "--ray" in args:
            row.update(_ray_memory())
        else:
            row["server_mb"] = round(_rss_mb(psutil.Process(proc.pid)))
    if load.errors or load.mismatches:
        raise SystemExit(f"{args}: {load.errors[:3]} {load.mismatches[:3]}")
    return row


def _p50(url: str, n: int = 100) -> float:
    """Median ms of ``n`` GETs of ``url``, one at a time."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 2)


def _ray_floor(cores: int) -> dict:
    """What Ray Serve itself costs per request on this machine: a minimal app (an ingress answering, or calling a
    second deployment that returns its argument), no tailorrt code in the path."""
    import ray
    from fastapi import FastAPI
    from ray import serve

    from tailorrt.serving.local import free_port

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Echo:
        async def echo(self, x: int) -> int:
            return x

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Front:
        def __init__(self, echo) -> None:
            self.echo = echo

        @app.get("/here")
        async def here(self) -> dict:
            return {}

        @app.get("/hop")
        async def hop(self) -> dict:
            return {"x": await self.echo.echo.remote(1)}

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Front.bind(Echo.bind()), name="floor", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        _p50(f"{base}/hop", 20)
        return {"ingress_p50_ms": _p50(f"{base}/here"), "ingress_and_one_hop_p50_ms": _p50(f"{base}/hop")}
    finally:
        serve.shutdown()
        ray.shutdown()


def _train(task: str, nproc: int, extra: list[str]) -> list[dict]:
    """Seconds per epoch of each phase of one ``tailor train --nproc`` run on a fresh model dir."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cmd = [str(Path(sys.executable).parent / "tailor"), "train", "--task", task, "--model-dir", tmp,
               "--nproc", str(nproc), *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        record = json.loads(next(Path(tmp, "tasks").glob("*/task.json")).read_text())
    phases = [p for p in record["training"]["phases"] if p.get("epochs")]
    return [{"phase": p["name"], "epochs": p["epochs"], "s_per_epoch": round(p["seconds"] / p["epochs"], 2),
             "accuracy": record["metrics"]["accuracy"], "wall_s": round(wall, 1)} for p in phases]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="runs/demo")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--train-task", default="synth-digits")
    ap.add_argument("--train-args", default="--teacher-epochs 1 --student-epochs 1 --finetune-epochs 1",
                    help="Options of both training runs (short schedules).")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--out", help="Write the figures as JSON here.")
    args = ap.parse_args()

    rt = Runtime(args.model_dir, backend=args.backend)
    tasks = [t for t in rt.tasks if t in BUILTIN_TASKS]
    plan = request_plan(rt, tasks, args.requests)
    del rt
    cores = os.cpu_count() or 1
    common = ["--backend", args.backend, "--max-queue", "4096"]
    ray = ["--ray", "--ray-cpus", str(cores), "--max-tasks-per-replica", str(len(tasks))]
    setups = {
        "tailor serve": common,
        "ray, 1 replica": [*common, *ray, "--replicas", "1", "--replica-cpus", str(cores), "--threads", str(cores)],
        "ray, 2 replicas": [*common, *ray, "--replicas", "2", "--replica-cpus", str(cores / 2),
                            "--threads", str(max(1, cores // 2))],
    }
    result = {"cores": cores, "tasks": tasks, "requests": args.requests, "clients": args.clients, "serve": {},
              "train": {}}
    for name, setup in setups.items():
        result["serve"][name] = row = _serve(args.model_dir, plan, args.clients, min(200, args.requests), setup)
        print(f"{name:16s} {row['requests_per_s']:7.1f} req/s  p50 {row['latency_ms']['p50']:7.1f} ms  "
              f"p99 {row['latency_ms']['p99']:7.1f} ms  (one client: p50 {row['one_client_p50_ms']:5.1f} ms)  memory "
              + (f"{row['server_mb']} MB" if "server_mb" in row else
                 f"replicas {row['replicas_mb']} MB + Ray's own {row['ray_other_mb']} MB"), flush=True)
    result["ray_floor"] = floor = _ray_floor(cores)
    print(f"a minimal Ray Serve app: {floor['ingress_p50_ms']} ms to its ingress and back, "
          f"{floor['ingress_and_one_hop_p50_ms']} ms with one handle call to a second deployment (one client)")
    for name, row in result["serve"].items():
        print(f"  {name}: /v2/health/live {row['live_p50_ms']} ms, /v2/health/ready {row['ready_p50_ms']} ms "
              "(one client)")
    base = result["serve"]["tailor serve"]["requests_per_s"]
    for name, row in result["serve"].items():
        print(f"  {name}: {row['requests_per_s'] / base:.2f}x the requests/s of tailor serve; one request alone takes "
              f"{row['one_client_p50_ms'] - result['serve']['tailor serve']['one_client_p50_ms']:+.1f} ms")
    if not args.skip_train:
        for n in (1, 2):
            result["train"][f"nproc {n}"] = rows = _train(args.train_task, n, args.train_args.split())
            print(f"train --nproc {n}: " + ", ".join(f"{r['phase']} {r['s_per_epoch']} s/epoch" for r in rows)
                  + f"; accuracy {rows[0]['accuracy']}%, wall {rows[0]['wall_s']} s", flush=True)
        one, two = result["train"]["nproc 1"], result["train"]["nproc 2"]
        for a, b in zip(one, two):
            print(f"  {a['phase']}: --nproc 2 takes {b['s_per_epoch'] / a['s_per_epoch']:.2f}x the time per epoch "
                  "of --nproc 1")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
