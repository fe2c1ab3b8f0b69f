"""``tailor bench``: tailorrt against one fine-tuned model per task, each in its own ONNX Runtime session (what a
user would deploy otherwise), and against the machine's dense limit, measured side by side in one run.

- Load: resident memory and load time, each from a fresh process (so one setting's allocator leftovers do
  not count against the next), and bytes on disk.
- Speed: images/s per task at each batch size, tailorrt and the per-task model timed in interleaved rounds
  (median, min and max), each task's speedup over its per-task model next to its FLOP ratio.
- Limit: the best multiply-accumulates per second of a large MatMul and a large convolution in ONNX Runtime
  with the same threads, and each task's achieved rate as a fraction of it.
- Stream: latency (p50/p99) and throughput of a closed-loop stream of single-image requests through the
  dynamic batcher, tasks mixed, against the same requests run one task at a time.

The per-task model of a NetTailor task is its teacher (the finished teacher phase that ``tailor train`` leaves
in ``.work/<task>/teacher.safetensors``); where the model dir has no teacher, a stand-in of the same architecture (the backbone's weights and the task's classes)
is timed instead, which costs the same memory and time but says nothing about accuracy. The JSON says which.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from tailorrt.backbones import UniversalBackbone
from tailorrt.errors import ConfigError
from tailorrt.io import load_metadata, load_tensors, read_json, write_json
from tailorrt.pack import ModelDir, machine, pack_file, versions
from tailorrt.tuned import TunedNet, TuneSpec

MB = 1e6


@dataclass
class BenchRequest:
    """What ``tailor bench`` measures."""

    model_dir: str = "runs"
    tasks: list[str] | None = None  # None: every task of the model dir
    backend: str = "onnx"
    batches: tuple[int, ...] = (1, 32)
    rounds: int = 7
    requests: int = 1000  # per stream
    clients: int = 16
    max_batch: int = 32
    threads: int | None = None  # None: torch's default
    out: str | None = None  # default <model-dir>/bench/bench.json

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class PerTaskModel:
    """One task's stand-alone fine-tuned model, as an ONNX graph."""

    task: str
    path: Path
    kind: str  # "teacher" | "stand-in"
    flops: int
    bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.bytes = self.path.stat().st_size


def teacher_state_for(net: TunedNet, teacher_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A :class:`~tailorrt.teacher.Teacher`'s weights under a whole-backbone :class:`TunedNet`'s names."""
    out = {}
    for k, v in teacher_state.items():
        if k.startswith("backbone.stem."):
            out["units.0." + k[len("backbone.stem."):]] = v
        elif k.startswith("backbone.blocks."):
            i, _, rest = k[len("backbone.blocks."):].partition(".")
            out[f"units.{int(i) + 1}.{rest}"] = v
        elif k.startswith("backbone.head_norm."):
            out["head_norm." + k[len("backbone.head_norm."):]] = v
        elif k.startswith("classifier."):
            out[k] = v
    return out


def teacher_checkpoint(mdir: ModelDir, task: str) -> dict[str, torch.Tensor] | None:
    """The weights of ``task``'s finished NetTailor teacher phase, if its training left them in the model dir."""
    path = mdir.work_dir(task) / "teacher.safetensors"
    if mdir.task_meta(task).get("method") != "nettailor" or not path.is_file() or load_metadata(path).get("done") != "1":
        return None
    return {k[len("model."):]: v for k, v in load_tensors(path).items() if k.startswith("model.")}


def per_task_model(mdir: ModelDir, task: str, backbone: UniversalBackbone, out_dir: Path) -> PerTaskModel:
    """Write ``task``'s per-task model (its teacher, or a same-architecture stand-in) as a stand-alone graph."""
    from tailorrt.export.graph import GraphBuilder, SharedWeights, save_graph
    from tailorrt.export.networks import emit_network

    meta = mdir.task_meta(task)
    net = TunedNet(backbone, len(meta["classes"]), TuneSpec(units=tuple(range(backbone.num_units)))).eval()
    teacher = teacher_checkpoint(mdir, task)
    kind = "stand-in"
    if teacher is not None:
        net.load_state_dict(teacher_state_for(net, teacher), strict=True)
        kind = "teacher"
    size = backbone.spec.input_size
    g = GraphBuilder(task, SharedWeights(torch.nn.Module()))  # nothing shared: a model of its own
    emit_network(g, net)
    path = out_dir / f"{task}.onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_graph(g.model((3, size, size), len(meta["classes"]), {"task": task, "kind": kind}), path)
    flops = net.accounting(size)["flops"]
    return PerTaskModel(task, path, kind, flops)


# ---------------------------------------------------------------------------------------------------- limit

def _dense_graph(kind: str, n: int) -> tuple[bytes, dict[str, np.ndarray], int]:
    """A one-node graph (a large MatMul or 3x3 convolution), its input and its multiply-accumulates."""
    rng = np.random.default_rng(0)
    if kind == "matmul":
        w = rng.standard_normal((n, n)).astype(np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x = rng.standard_normal((n, n)).astype(np.float32)
        macs = n ** 3
        out_shape = [n, n]
    else:
        c, hw, b = n // 8, 32, 32
        w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = rng.standard_normal((b, c, hw, hw)).astype(np.float32)
        macs = b * c * c * 9 * hw * hw
        out_shape = list(x.shape)
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [onnx.numpy_helper.from_array(w, "w")])
    from tailorrt.export.graph import IR_VERSION, OPSET

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model.SerializeToString(), {"x": x}, macs


def dense_limit(threads: int, rounds: int = 7) -> dict:
    """The best multiply-accumulates per second of a large MatMul and a large convolution in ONNX Runtime."""
    import onnxruntime as ort

    from tailorrt.export.speed import time_side_by_side
    from tailorrt.onnx_sessions import session_options

    out = {}
    for kind in ("matmul", "conv"):
        graph, feeds, macs = _dense_graph(kind, 1024)
        sess = ort.InferenceSession(graph, session_options(threads), providers=["CPUExecutionProvider"])
        res = time_side_by_side({kind: lambda: sess.run(None, feeds)}, batch=1, rounds=rounds, round_seconds=0.3)
        out[kind] = {"gmacs_per_s": round(macs / (res[kind]["ms_min"] / 1e3) / 1e9, 2), "macs": macs, **res[kind]}
    out["best_gmacs_per_s"] = max(v["gmacs_per_s"] for v in out.values())
    return out


# --------------------------------------------------------------------------------------------------- loading

PROBE = r"""
import gc, json, sys, time
import numpy as np, psutil, onnxruntime, torch
import tailorrt.runtime, tailorrt.onnx_sessions
args = json.loads(sys.argv[1])
proc = psutil.Process()
gc.collect(); base = proc.memory_info().rss
t0 = time.perf_counter()
x = np.zeros((1, 3, args["size"], args["size"]), np.float32)
if args["kind"] == "tailorrt":
    rt = tailorrt.runtime.Runtime(args["model_dir"], tasks=args["tasks"], backend=args["backend"],
                                  threads=args["threads"])
    run = lambda t: rt.logits(t, x)
    names = args["tasks"]
else:
    opts = tailorrt.onnx_sessions.session_options(args["threads"])
    sessions = {p: onnxruntime.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in args["graphs"]}
    run = lambda p: sessions[p].run(["logits"], {"input": x})
    names = args["graphs"]
loaded = time.perf_counter() - t0
for n in names:
    run(n)
gc.collect()
print(json.dumps({"base_rss": base, "rss_added": proc.memory_info().rss - base, "load_seconds": loaded,
                  "first_call_seconds": time.perf_counter() - t0 - loaded}))
"""


def probe_load(args: dict) -> dict:
    """Resident memory added and load time of one setting, measured in a fresh Python process."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"the load probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- stream

def stream(run: Callable[[str, np.ndarray], np.ndarray], tasks: list[str], images: dict[str, np.ndarray], *,
           requests: int, clients: int, max_batch: int) -> dict:
    """A closed loop of ``clients`` threads sending one-image requests (task ``i`` of the list in turn) through
    the dynamic batcher; latency percentiles and throughput."""
    from tailorrt.serving.batcher import BatchConfig, Batcher

    batcher = Batcher(run, BatchConfig(max_batch=max_batch, max_delay_ms=2.0, max_queue=max(4 * clients, 512)))
    latencies: list[float] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            task = tasks[i % len(tasks)]
            t0 = time.perf_counter()
            batcher.submit(task, images[task]).result()
            with lock:
                latencies.append(time.perf_counter() - t0)

    for task in tasks:  # warm-up
        batcher.submit(task, images[task]).result()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    batcher.close()
    lat = np.array(latencies) * 1e3
    return {"requests": len(lat), "seconds": round(wall, 3), "images_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def streams(run: Callable[[str, np.ndarray], np.ndarray], tasks: list[str], images: dict[str, np.ndarray],
            req: BenchRequest) -> dict:
    """The mixed stream, each task's own stream of as many requests, and mixed / single-task throughput (the
    single-task figure is the rate at which the one-task streams would serve the mixed stream's requests)."""
    kw = {"requests": req.requests, "clients": req.clients, "max_batch": req.max_batch}
    single = {t: stream(run, [t], images, **kw) for t in tasks}
    mixed = stream(run, tasks, images, **kw)
    single_rate = len(tasks) / sum(1 / single[t]["images_per_s"] for t in tasks)
    return {"mixed": mixed, "single": single, "single_equivalent_images_per_s": round(single_rate, 1),
            "mixed_over_single": round(mixed["images_per_s"] / single_rate, 3)}


# ----------------------------------------------------------------------------------------------------- bench

def bench(req: BenchRequest, report: Callable[[str], None] = print) -> dict:
    """Measure (see the module docstring), write the JSON and return it with a markdown summary under "summary"."""
    import onnxruntime as ort

    from tailorrt.export.speed import time_side_by_side
    from tailorrt.onnx_sessions import session_options
    from tailorrt.runtime import Runtime

    mdir = ModelDir(req.model_dir)
    tasks = req.tasks or mdir.task_names()
    if not tasks:
        raise ConfigError(f"{mdir.root} has no tasks; train one first (tailor train --task synth-digits)")
    threads = req.threads or torch.get_num_threads()
    backbone, bmeta = mdir.load_backbone()
    size = backbone.spec.input_size
    out_dir = mdir.root / "bench"
    report(f"writing the per-task models of {len(tasks)} tasks to {out_dir / 'per-task'}")
    models = {t: per_task_model(mdir, t, backbone, out_dir / "per-task") for t in tasks}
    rt = Runtime(req.model_dir, tasks=tasks, backend=req.backend, threads=threads)
    sessions = {t: ort.InferenceSession(str(m.path), session_options(threads), providers=["CPUExecutionProvider"])
                for t, m in models.items()}

    report("measuring the dense limit")
    limit = dense_limit(threads, req.rounds)
    report("measuring load time and memory in fresh processes")
    probe = {"model_dir": str(mdir.root), "tasks": tasks, "backend": req.backend, "threads": threads, "size": size}
    load = {"tailorrt": probe_load({**probe, "kind": "tailorrt"}),
            "per_task": probe_load({**probe, "kind": "per-task", "graphs": [str(m.path) for m in models.values()]})}
    metas = {t: mdir.task_meta(t) for t in tasks}
    disk = {"tailorrt": bmeta["bytes"] + sum(pack_file(metas[t])["bytes"] for t in tasks),
            "per_task": sum(m.bytes for m in models.values())}

    per_task: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    for t in tasks:
        metrics = metas[t]["metrics"]
        row = {"method": metas[t]["method"], "flops": metrics["flops"], "per_task_flops": models[t].flops,
               "per_task_model": models[t].kind, "flop_ratio": round(models[t].flops / metrics["flops"], 3),
               "batches": {}}
        for b in req.batches:
            report(f"timing {t} at batch {b}")
            x = rng.standard_normal((b, 3, size, size)).astype(np.float32)
            res = time_side_by_side({"tailorrt": lambda: rt.logits(t, x),
                                     "per_task": lambda: sessions[t].run(["logits"], {"input": x})},
                                    batch=b, rounds=req.rounds)
            speedup = res["tailorrt"]["images_per_s"] / res["per_task"]["images_per_s"]
            achieved = metrics["flops"] * res["tailorrt"]["images_per_s"] / 1e9
            row["batches"][str(b)] = {**res, "speedup": round(speedup, 3),
                                      "speedup_over_flop_ratio": round(speedup / row["flop_ratio"], 3),
                                      "achieved_gmacs_per_s": round(achieved, 2),
                                      "fraction_of_limit": round(achieved / limit["best_gmacs_per_s"], 3)}
        per_task[t] = row

    report(f"streaming {req.requests} requests per stream with {req.clients} clients")
    images = {t: rng.standard_normal((1, 3, size, size)).astype(np.float32) for t in tasks}
    stream_result = {"tailorrt": streams(rt.logits, tasks, images, req),
                     "per_task": streams(lambda t, x: sessions[t].run(["logits"], {"input": x})[0], tasks, images,
                                         req)}
    result = {"request": req.to_json(), "backbone": {"name": bmeta["name"], "bytes": bmeta["bytes"]},
              "machine": machine(), "versions": {**versions(), "onnxruntime": ort.__version__},
              "threads": threads, "limit": limit, "load": load, "disk_bytes": disk, "tasks": per_task,
              "stream": stream_result}
    result["summary"] = summary(result)
    return _written(result, Path(req.out) if req.out else out_dir / "bench.json")


def _written(result: dict, path: Path) -> dict:
    """Write ``result`` as JSON at ``path`` and its summary as markdown next to it; records the path."""
    write_json(path, result)
    path.with_suffix(".md").write_text(result["summary"])
    result["path"] = str(path)
    return result


def summary(r: dict) -> str:
    """The markdown summary of a bench result."""
    load, disk = r["load"], r["disk_bytes"]
    lines = [f"# tailor bench: {len(r['tasks'])} tasks on {r['backbone']['name']} ({r['request']['backend']}, "
             f"{r['threads']} threads)", "",
             "| | resident memory added | load s | on disk |", "|---|---|---|---|"]
    for k, label in (("tailorrt", "tailorrt, one Runtime"), ("per_task", "one model per task, own session each")):
        lines.append(f"| {label} | {load[k]['rss_added'] / MB:.1f} MB | {load[k]['load_seconds']:.2f} | "
                     f"{disk[k] / MB:.1f} MB |")
    lim = r["limit"]
    lines += ["", f"Dense limit: {lim['best_gmacs_per_s']:.1f} GMAC/s (MatMul {lim['matmul']['gmacs_per_s']:.1f}, "
              f"conv {lim['conv']['gmacs_per_s']:.1f}).", "",
              "| task | per-task model | MFLOPs (per-task) | FLOP ratio | batch | tailorrt img/s | per-task img/s | "
              "speedup | speedup / FLOP ratio | GMAC/s | of limit |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t, row in r["tasks"].items():
        for b, m in row["batches"].items():
            lines.append(f"| {t} | {row['per_task_model']} | {row['flops'] / 1e6:.1f} ({row['per_task_flops'] / 1e6:.1f}) "
                         f"| {row['flop_ratio']:.2f} | {b} | {m['tailorrt']['images_per_s']:.0f} "
                         f"({m['tailorrt']['ms_min']:.2f}-{m['tailorrt']['ms_max']:.2f} ms) | "
                         f"{m['per_task']['images_per_s']:.0f} | {m['speedup']:.2f} | {m['speedup_over_flop_ratio']:.2f} "
                         f"| {m['achieved_gmacs_per_s']:.1f} | {100 * m['fraction_of_limit']:.0f}% |")
    lines += ["", "| stream (batch limit " + str(r["request"]["max_batch"]) + ") | mixed img/s | p50 ms | p99 ms | "
              "one task at a time img/s | mixed / single |", "|---|---|---|---|---|---|"]
    for k, label in (("tailorrt", "tailorrt"), ("per_task", "per-task models")):
        s = r["stream"][k]
        lines.append(f"| {label} | {s['mixed']['images_per_s']:.0f} | {s['mixed']['p50_ms']:.1f} | "
                     f"{s['mixed']['p99_ms']:.1f} | {s['single_equivalent_images_per_s']:.0f} | "
                     f"{s['mixed_over_single']:.2f} |")
    return "\n".join(lines) + "\n"



# --------------------------------------------------------------------------------------------------- scaling

def scaling(req: BenchRequest, counts: tuple[int, ...], report: Callable[[str], None] = print) -> dict:
    """Resident memory and load time for K = ``counts`` tasks, tailorrt against one per-task model each; writes
    the JSON (``req.out``, default ``<model-dir>/bench/scaling.json``), its markdown and a PNG plot next to it.

    Extra tasks are copies of the model dir's packs under new names, in ``<model-dir>/bench/scaling/`` (exported
    there for the onnx backend); each copy's per-task model is a session of its own over the original's graph.
    The ideal is one backbone plus the K packs; the fixed overhead is what tailorrt adds beyond the ideal at K=1.
    """
    from tailorrt.export.exporter import ExportRequest, export_model

    mdir = ModelDir(req.model_dir)
    base = req.tasks or mdir.task_names()
    if not base or not counts or min(counts) < 1:
        raise ConfigError("scaling needs at least one task and task counts of 1 or more, e.g. --scaling 1,2,4,8,16")
    threads = req.threads or torch.get_num_threads()
    backbone, bmeta = mdir.load_backbone()
    size = backbone.spec.input_size
    root = mdir.root / "bench" / "scaling"
    if root.exists():
        shutil.rmtree(root)
    (root / "tasks").mkdir(parents=True)
    shutil.copytree(mdir.backbone_dir, root / "backbone")
    names, sources = [], {}
    for i in range(max(counts)):
        src = base[i % len(base)]
        name = src if i < len(base) else f"{src}-copy{i // len(base)}"
        _copy_pack(mdir, src, root / "tasks" / name, name)
        names.append(name)
        sources[name] = src
    if req.backend == "onnx":
        report(f"exporting {len(names)} tasks to {root / 'onnx'}")
        export_model(ExportRequest(model_dir=str(root), parity_images=4), report=lambda _m: None)
    models = {t: per_task_model(mdir, t, backbone, mdir.root / "bench" / "per-task") for t in base}
    sub = ModelDir(root)
    rows = []
    for k in counts:
        tasks = names[:k]
        report(f"loading {k} task{'s' * (k > 1)}")
        probe = {"model_dir": str(root), "tasks": tasks, "backend": req.backend, "threads": threads, "size": size}
        ours = probe_load({**probe, "kind": "tailorrt"})
        theirs = probe_load({**probe, "kind": "per-task", "graphs": [str(models[sources[t]].path) for t in tasks]})
        packs = sum(pack_file(sub.task_meta(t))["bytes"] for t in tasks)
        rows.append({"tasks": k, "ideal_bytes": bmeta["bytes"] + packs, "tailorrt_rss": ours["rss_added"],
                     "tailorrt_load_s": round(ours["load_seconds"], 3), "per_task_rss": theirs["rss_added"],
                     "per_task_load_s": round(theirs["load_seconds"], 3)})
    overhead = rows[0]["tailorrt_rss"] - rows[0]["ideal_bytes"]
    for r in rows:
        r["beyond_overhead_over_ideal"] = round((r["tailorrt_rss"] - overhead) / r["ideal_bytes"], 3)
    result = {"backbone": {"name": bmeta["name"], "bytes": bmeta["bytes"]}, "backend": req.backend,
              "fixed_overhead_bytes": overhead, "rows": rows, "threads": threads}
    result["summary"] = scaling_summary(result)
    path = Path(req.out) if req.out else mdir.root / "bench" / "scaling.json"
    _written(result, path)
    scaling_plot(result, path.with_suffix(".png"))
    return result


def _copy_pack(mdir: ModelDir, src: str, dest: Path, name: str) -> None:
    """A pack of ``src`` under the name ``name`` (the pack's own record of its name changes with it)."""
    shutil.copytree(mdir.tasks_dir / src, dest)
    meta = read_json(dest / "task.json")
    meta["task"] = name
    write_json(dest / "task.json", meta)


def scaling_summary(r: dict) -> str:
    lines = [f"Scaling on {r['backbone']['name']} ({r['backbone']['bytes'] / MB:.1f} MB), {r['backend']}: fixed "
             f"overhead {r['fixed_overhead_bytes'] / MB:.1f} MB (tailorrt at K=1 minus one backbone and one pack)", "",
             "| tasks | ideal (backbone + packs) | tailorrt | (tailorrt - overhead) / ideal | per-task models | "
             "tailorrt load s | per-task load s |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['tasks']} | {row['ideal_bytes'] / MB:.1f} MB | {row['tailorrt_rss'] / MB:.1f} MB | "
                     f"{row['beyond_overhead_over_ideal']:.3f} | {row['per_task_rss'] / MB:.1f} MB | "
                     f"{row['tailorrt_load_s']:.2f} | {row['per_task_load_s']:.2f} |")
    return "\n".join(lines) + "\n"


def scaling_plot(r: dict, path: Path) -> Path:
    """Resident memory against the number of tasks, tailorrt, per-task models and the ideal, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = [row["tasks"] for row in r["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(k, [row["per_task_rss"] / MB for row in r["rows"]], "o-", color="tab:gray", label="one model per task")
    ax.plot(k, [row["tailorrt_rss"] / MB for row in r["rows"]], "o-", color="tab:blue", label="tailorrt")
    ax.plot(k, [(row["ideal_bytes"] + r["fixed_overhead_bytes"]) / MB for row in r["rows"]], "--", color="tab:green",
            label="ideal + fixed overhead")
    ax.set_xlabel("tasks loaded")
    ax.set_ylabel("resident memory added (MB)")
    ax.set_title(f"{r['backbone']['name']} backbone, {r['backend']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
