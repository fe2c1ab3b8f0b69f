"""``tailor serve`` under load from a load generator that is not Python (``wrk``), beside the in-process ``Runtime``
on the same images, and beside another build of tailorrt served the same way in the same run.

    apt-get install wrk                                        # Debian's package: a C HTTP load generator
    python benchmarks/serve_throughput.py                      # this tree, 3 synthetic tasks at 32 px
    python benchmarks/serve_throughput.py --other /tmp/base-venv/bin/python   # and another install beside it
    python benchmarks/serve_throughput.py --backbone resnet34 --input-size 224 --tasks 2 --seconds 10
    python benchmarks/serve_throughput.py --workers 1,2        # this tree with 1 and with 2 worker processes

The model directory is synthetic (``tailorrt.training.synthetic``: random weights, each task pruned differently;
task ``synthetic-0`` keeps every universal block, the others about half), so the tasks' FLOPs differ as tailored
tasks' do. Per task and per build, in ``--rounds`` rounds that take turns: ``wrk`` sends the same request for
``--seconds`` over ``--connections`` kept-alive connections: KServe v2 binary (one PNG as the ``image`` BYTES input,
Triton's binary tensor data extension, the answer's ``probabilities`` as binary data), the same as JSON (the PNG
base64), and ``GET /v2/health/live`` (the framework's own ceiling). Before timing, every request kind is sent once
by a Python client and its top class compared with ``Runtime.predict`` on the same PNG; ``wrk``'s non-2xx count is
reported. The in-process figure is ``Runtime.predict`` on the same PNG at batch 1 and ``--batch`` (decode,
preprocess, logits), in this process. Server and load generator share the machine's cores, as the issue states it.
Where a binary request's time goes: the server's statistics extension (per phase: parsing and decoding, waiting for
the batch, the batch, the answer; and the whole time inside the server's timed path) read before and after each
``wrk`` run, beside ``wrk``'s mean latency; the time between the phases is the request's wait for the event loop to
take it up again after each one (below zero where decoding, which overlaps the wait for the batch, is long), and
what is left is spent outside the timed path (the socket, HTTP parsing, the event loop's queue). After the load,
each server's memory: the PSS and RSS summed over its processes (``/proc/PID/smaps_rollup``), and with ``--workers
N`` the PSS of the weight files the workers map, summed over the workers, against the files' size (1.00x: the
weights are counted once, however many workers map them). Prints the CPU, a table per build and the ratios;
``--out`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEADER = "Inference-Header-Content-Length"
KINDS = ("binary", "json", "live")

LUA = """
local f = io.open("{body}", "rb")
wrk.method = "{method}"
wrk.body = f and f:read("*all") or nil
if f then f:close() end
{headers}
"""


def _png(size: int, seed: int) -> bytes:
    from tailorrt.serving.local import png_bytes

    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def requests_for(png: bytes) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """Per kind: (method, body, headers) of one request for a task (the path is added per task)."""
    from tailorrt.serving.protocol import pack_bytes

    raw = pack_bytes([png])
    want = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(raw)}}], "outputs": want}).encode()
    as_json = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                      "data": [base64.b64encode(png).decode()]}],
                          "outputs": [{"name": "probabilities"}]}).encode()
    return {"binary": ("POST", head + raw, {"Content-Type": "application/octet-stream", HEADER: str(len(head))}),
            "json": ("POST", as_json, {"Content-Type": "application/json"}),
            "live": ("GET", b"", {})}


def path_of(kind: str, task: str) -> str:
    return "/v2/health/live" if kind == "live" else f"/v2/models/{task}/infer"


def top_class(kind: str, status: int, body: bytes, header_length: str | None) -> int:
    """The answer's top class, from the binary or JSON probabilities."""
    if status != 200:
        raise RuntimeError(f"{kind}: HTTP {status}: {body[:200]!r}")
    if kind == "binary":
        n = int(header_length)
        return int(np.argmax(np.frombuffer(body[n:], np.float32)))
    return int(np.argmax(json.loads(body)["outputs"][0]["data"]))


def check_answers(port: int, tasks: list[str], reqs: dict, expected: dict[str, int]) -> None:
    """Send each request kind once per task with a plain HTTP client; the top class must be ``Runtime.predict``'s."""
    for task in tasks:
        for kind in ("binary", "json"):
            method, body, headers = reqs[kind]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request(method, path_of(kind, task), body=body, headers=headers)
            resp = conn.getresponse()
            got = top_class(kind, resp.status, resp.read(), resp.getheader(HEADER))
            conn.close()
            if got != expected[task]:
                raise SystemExit(f"{task} over {kind}: top class {got}, Runtime.predict says {expected[task]}")


def run_wrk(port: int, kind: str, task: str, req: tuple, seconds: float, connections: int, tmp: Path) -> dict:
    """One ``wrk`` run: req/s, latency percentiles (ms) and the non-2xx answers."""
    method, body, headers = req
    body_file = tmp / f"{kind}.body"
    body_file.write_bytes(body)
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script = tmp / f"{kind}.lua"
    script.write_text(LUA.format(body=body_file if body else "/nonexistent", method=method, headers=lines))
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "60s", "--latency", "-s",
                          str(script),
                          f"http://127.0.0.1:{port}{path_of(kind, task)}"], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    mean = _ms(re.search(r"^\s+Latency\s+([\d.]+\w+)", out, re.M).group(1))
    lat = {p: _ms(re.search(rf"^\s+{p}%\s+([\d.]+\w+)", out, re.M).group(1)) for p in ("50", "99")}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"req_per_s": rps, "mean_ms": mean, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else ""}


PHASES = ("compute_input", "queue", "compute_infer", "compute_output", "success")


def phase_totals(port: int, task: str) -> dict[str, tuple[int, int]]:
    """The server's statistics extension for ``task``: (count, ns) per phase."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"/v2/models/{task}/stats")
    stats = json.loads(conn.getresponse().read())["model_stats"][0]["inference_stats"]
    conn.close()
    return {p: (int(stats[p]["count"]), int(stats[p]["ns"])) for p in PHASES}


def breakdown(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per request of each phase between two :func:`phase_totals`."""
    out = {}
    for p in PHASES:
        count, ns = after[p][0] - before[p][0], after[p][1] - before[p][1]
        out[p] = ns / count / 1e6 if count else 0.0
    return out


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def memory(pid: int) -> dict:
    """The server's PSS and RSS (MB) summed over its processes, and (workers) the PSS of the mapped weight files
    summed over the processes against the files' size."""
    pss = rss = mapped_pss = 0
    files: dict[str, int] = {}
    for p in process_tree(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            smaps = Path(f"/proc/{p}/smaps").read_text().splitlines()
        except OSError:
            continue
        pss += int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))
        rss += int(re.search(r"^Rss:\s+(\d+)", rollup, re.M).group(1))
        path = None
        for line in smaps:
            head = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
            if head:
                path = head.group(1) if "tailorrt-workers-" in head.group(1) and "/weights/" in head.group(1) \
                    else None
            elif path and line.startswith("Pss:"):
                mapped_pss += int(line.split()[1])
                files.setdefault(path, os.stat(path).st_size if os.path.exists(path) else 0)
    mb = 1024 / 1e6
    return {"processes": len(process_tree(pid)), "pss_mb": pss * mb, "rss_mb": rss * mb,
            "weight_files_mb": sum(files.values()) / 1e6, "weight_files_pss_mb": mapped_pss * mb}


def in_process(model_dir: str, tasks: list[str], png: bytes, batch: int, seconds: float) -> dict[str, dict]:
    """``Runtime.predict`` on the PNG in this process: images/s at batch 1 and at ``batch``."""
    from tailorrt import Runtime

    rt = Runtime(model_dir, backend="onnx")
    out = {}
    for task in tasks:
        row = {}
        for b in (1, batch):
            images = [png] * b
            rt.predict(task, images)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                rt.predict(task, images)
                n += b
            row[f"batch_{b}"] = n / (time.perf_counter() - t0)
        out[task] = row
    return out


def expected_classes(model_dir: str, tasks: list[str], png: bytes) -> dict[str, int]:
    from tailorrt import Runtime

    rt = Runtime(model_dir, backend="onnx")
    return {t: rt.predict(t, png).indices[0] for t in tasks}


def flops_of(model_dir: str, tasks: list[str]) -> dict[str, float]:
    from tailorrt.pack import ModelDir

    mdir = ModelDir(model_dir)
    records = {t: mdir.task_record(t) for t in tasks}
    return {t: r.metrics.flops / r.metrics.teacher_flops for t, r in records.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--backbone", default="embedded")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="Each wrk run's length.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8, help="The in-process runtime's larger batch.")
    ap.add_argument("--kinds", default=",".join(KINDS), help="Request kinds: binary, json, live.")
    ap.add_argument("--other", action="append", default=[], metavar="PYTHON",
                    help="Another install's interpreter whose tailor serve runs beside this tree's (repeatable).")
    ap.add_argument("--serve-args", default="", help="More tailor serve options for every build.")
    ap.add_argument("--workers", default="1", help="Comma-separated worker counts this tree is served with, each "
                    "a build of its own (tailor serve --workers N).")
    ap.add_argument("--model-dir", help="Reuse this synthetic model dir (default: a new one in a temp dir).")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (Debian: apt-get install wrk)")

    from tailorrt.cpu import cpu_summary
    from tailorrt.serving.local import serve_process

    print(f"CPU: {cpu_summary()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="serve-throughput-"))
    os.chdir(tmp)  # a server's ``python -m`` imports the install it belongs to, not a tree in the working directory
    model_dir = args.model_dir or str(tmp / "models")
    if not args.model_dir:
        from tailorrt.training.synthetic import make_model_dir

        make_model_dir(model_dir, backbone=args.backbone, tasks=args.tasks, input_size=args.input_size)
        subprocess.run([sys.executable, "-m", "tailorrt.cli.app", "export", "--model-dir", model_dir], check=True,
                       stdout=subprocess.DEVNULL)
    from tailorrt.pack import ModelDir

    tasks = ModelDir(model_dir).task_names()
    png = _png(args.input_size, 0)
    reqs = requests_for(png)
    expected = expected_classes(model_dir, tasks, png)
    flops = flops_of(model_dir, tasks)
    local = in_process(model_dir, tasks, png, args.batch, 2.0)
    builds = {("this tree" if n == "1" else f"this tree, {n} workers"): (sys.executable, ("--workers", n))
              for n in args.workers.split(",")}
    builds.update({f"other {i + 1} ({p})": (p, ()) for i, p in enumerate(args.other)})
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict = {name: {} for name in builds}
    servers, procs = {}, {}
    try:
        for name, (python, extra) in builds.items():  # every build's server up at once; they take turns
            ctx = serve_process(model_dir, "--backend", "onnx", "--no-grpc", *extra, *args.serve_args.split(),
                                python=python)
            url, procs[name] = ctx.__enter__()
            servers[name] = (ctx, int(url.rsplit(":", 1)[1]))
            check_answers(servers[name][1], tasks, reqs, expected)
        for r in range(args.rounds):
            for name in builds:
                port = servers[name][1]
                for kind in kinds:
                    for task in (tasks if kind != "live" else tasks[:1]):
                        before = phase_totals(port, task) if kind != "live" else None
                        res = run_wrk(port, kind, task, reqs[kind], args.seconds, args.connections, tmp)
                        if before is not None:
                            res["server_ms"] = breakdown(before, phase_totals(port, task))
                        results[name].setdefault(kind, {}).setdefault(task, []).append(res)
                        print(f"round {r + 1} {name} {kind} {task}: {res['req_per_s']:.0f} req/s, p50 "
                              f"{res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, non-2xx {res['non_2xx']}",
                              flush=True)
        for name in builds:
            results[name]["memory"] = memory(procs[name].pid)
    finally:
        for name, (ctx, _port) in servers.items():
            try:
                ctx.__exit__(None, None, None)
            except subprocess.TimeoutExpired:  # a build that does not stop on SIGTERM within a minute
                print(f"{name}: did not stop within 60 s of SIGTERM; killed", flush=True)
                procs[name].kill()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, local, flops, tasks, args)
    if args.out:
        args.out.write_text(json.dumps({"results": results, "in_process": local, "flops_vs_teacher": flops,
                                        "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))


def _merged(runs: list[dict]) -> dict:
    """Rounds of one measurement: the mean req/s, the worst p50/p99, the sum of errors."""
    return {"req_per_s": sum(r["req_per_s"] for r in runs) / len(runs), "p50_ms": max(r["p50_ms"] for r in runs),
            "p99_ms": max(r["p99_ms"] for r in runs), "non_2xx": sum(r["non_2xx"] for r in runs)}


def report(results: dict, local: dict, flops: dict, tasks: list[str], args) -> None:
    b = args.batch
    print(f"\nin process (Runtime.predict on the PNG, onnx): images/s at batch 1 and {b}")
    for name, by_kind in results.items():
        print(f"\n{name}, {args.connections} connections, {args.rounds} x {args.seconds:g} s each:\n")
        print(f"| task | FLOPs vs teacher | in process b1 / b{b} img/s | binary req/s (x in-process b{b}) | "
              "p50 / p99 ms | json req/s | non-2xx |\n|---|---|---|---|---|---|---|")
        for t in tasks:
            bi = _merged(by_kind["binary"][t]) if "binary" in by_kind else None
            js = _merged(by_kind["json"][t]) if "json" in by_kind else None
            loc = local[t]
            cells = [t, f"{flops[t]:.2f}x", f"{loc['batch_1']:.0f} / {loc[f'batch_{b}']:.0f}"]
            cells += [f"{bi['req_per_s']:.0f} ({bi['req_per_s'] / loc[f'batch_{b}']:.2f}x)",
                      f"{bi['p50_ms']:.1f} / {bi['p99_ms']:.1f}"] if bi else ["-", "-"]
            errors = [r["socket_errors"] for k in ("binary", "json") for r in by_kind.get(k, {}).get(t, [])
                      if r["socket_errors"]]
            cells += [f"{js['req_per_s']:.0f}" if js else "-",
                      str((bi or {}).get("non_2xx", 0) + (js or {}).get("non_2xx", 0))
                      + (f" (socket errors: {'; '.join(errors)})" if errors else "")]
            print("| " + " | ".join(cells) + " |")
        if "live" in by_kind:
            live = _merged(next(iter(by_kind["live"].values())))
            print(f"\nGET /v2/health/live: {live['req_per_s']:.0f} req/s, p50 {live['p50_ms']:.1f} ms, p99 "
                  f"{live['p99_ms']:.1f} ms")
        if "binary" in by_kind:
            lean, heavy = min(tasks, key=flops.get), max(tasks, key=flops.get)
            ratio = _merged(by_kind["binary"][lean])["req_per_s"] / _merged(by_kind["binary"][heavy])["req_per_s"]
            engine = local[lean][f"batch_{b}"] / local[heavy][f"batch_{b}"]
            print(f"leanest / heaviest task over binary: {ratio:.2f}x (in process: {engine:.2f}x)")
        if "binary" in by_kind and all("server_ms" in r for runs in by_kind["binary"].values() for r in runs):
            print("\nwhere a binary request's time goes (ms, mean per request; the server's statistics extension "
                  "between the start and the end of each wrk run, and wrk's mean latency):\n")
            print("| task | wrk latency | parse + decode (compute_input) | waiting for its batch (queue) | its batch "
                  "(compute_infer) | answer (compute_output) | between the phases | outside the timed path |\n"
                  "|---|---|---|---|---|---|---|---|")
            for t in tasks:
                runs = by_kind["binary"][t]
                ms = {ph: sum(r["server_ms"][ph] for r in runs) / len(runs) for ph in PHASES}
                wrk_ms = sum(r["mean_ms"] for r in runs) / len(runs)
                between = ms["success"] - sum(ms[ph] for ph in PHASES if ph != "success")
                print(f"| {t} | {wrk_ms:.1f} | {ms['compute_input']:.1f} | {ms['queue']:.1f} | "
                      f"{ms['compute_infer']:.1f} | {ms['compute_output']:.2f} | {between:.1f} | "
                      f"{wrk_ms - ms['success']:.1f} |")
        mem = by_kind.get("memory")
        if mem:
            print(f"memory after the load: {mem['processes']} processes, PSS {mem['pss_mb']:.1f} MB, RSS "
                  f"{mem['rss_mb']:.1f} MB" + (f"; weight files {mem['weight_files_mb']:.1f} MB, their PSS over "
                                                f"the workers {mem['weight_files_pss_mb']:.1f} MB "
                                                f"({mem['weight_files_pss_mb'] / mem['weight_files_mb']:.2f}x)"
                                                if mem["weight_files_mb"] else ""))
    ours = [n for n in results if n.startswith("this tree")]
    pairs = [(n, ours[0]) for n in ours[1:]] + [(n, o) for n in ours for o in results if o not in ours]
    for name, other in pairs:
        for kind in ("binary", "live"):
            if kind in results[name] and kind in results[other]:
                mine = [_merged(v)["req_per_s"] for v in results[name][kind].values()]
                theirs = [_merged(v)["req_per_s"] for v in results[other][kind].values()]
                print(f"{kind}: {name} / {other}: {sum(mine) / sum(theirs):.2f}x req/s")

if __name__ == "__main__":
    main()
