"""``tailor bench``: tailorrt against one fine-tuned model per task, each in its own ONNX Runtime session (what a
user would deploy otherwise), and against the machine's dense limit, measured side by side in one run.

- Load: resident memory and load time, each from a fresh process (so one setting's allocator leftovers do
  not count against the next), and bytes on disk.
- Speed: images/s per task at each batch size, tailorrt and the per-task model timed in interleaved rounds
  (median, min and max), each task's speedup over its per-task model next to its FLOP ratio. A speedup is the
  median of the per-round ratios (the two ran back to back in each round, so a slow spell of the machine
  divides out), with its quartiles.
- Limit: the best multiply-accumulates per second of a large MatMul and a large convolution in ONNX Runtime
  with the same threads, and each task's achieved rate as a fraction of it.
- Profile: at the smallest batch, where each setting's time goes by operator type (ONNX Runtime's profiler).
- Stream: latency (p50/p99) and throughput of a closed-loop stream of single-image requests through the
  dynamic batcher, tasks mixed, against the same requests run one task at a time.

The per-task model of a NetTailor task is its teacher (the finished teacher phase that ``tailor train`` leaves
in ``.work/<task>/teacher.safetensors``); where the model dir has no teacher, a stand-in of the same architecture
(the backbone's weights and the task's classes) is timed instead, which costs the same memory and time but says
nothing about accuracy. The JSON says which.
"""

from __future__ import annotations

import json
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

from tailorrt import kinds
from tailorrt.cpu import cpu_summary
from tailorrt.errors import ConfigError
from tailorrt.files import write_json
from tailorrt.limits import MB
from tailorrt.precision import backend_of
from tailorrt.training import methods
from tailorrt.training.backbones import UniversalBackbone
from tailorrt.training.io import load_metadata, load_tensors
from tailorrt.training.methods.parts.tuned_net import TunedNet
from tailorrt.training.packs import TrainingDir, machine, versions


@dataclass
class BenchRequest:
    """What ``tailor bench`` measures."""

    model_dir: str = "runs"
    tasks: list[str] | None = None  # None: every task of the model dir
    backend: str = "onnx"
    batches: tuple[int, ...] = (1, 32)
    rounds: int = 7
    requests: int = 3000  # per stream
    clients: int = 16
    max_batch: int = 32
    threads: int | None = None  # None: torch's default
    precision: str = "fp32"  # int8 or bf16: also time the Runtime at that precision next to fp32
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
    """A :class:`~tailorrt.training.teacher.Teacher`'s weights under a whole-backbone :class:`TunedNet`'s names."""
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


def teacher_checkpoint(mdir: TrainingDir, task: str) -> dict[str, torch.Tensor] | None:
    """The weights of ``task``'s finished teacher phase (the whole backbone fine-tuned, where its method trains one),
    if its training left them in the model dir."""
    phase = methods.for_record(mdir.task_record(task)).teacher_phase
    path = mdir.work_dir(task) / f"{phase}.safetensors"
    if phase is None or not path.is_file() or load_metadata(path).get("done") != "1":
        return None
    return {k[len("model."):]: v for k, v in load_tensors(path).items() if k.startswith("model.")}


def reference_graph(backbone: UniversalBackbone, classes: int, name: str,
                    teacher: dict[str, torch.Tensor] | None = None) -> tuple[onnx.ModelProto, int]:
    """The whole backbone fine-tuned for ``classes`` (``teacher``'s weights, or the backbone's: a stand-in) as a
    stand-alone graph at the backbone's input size, and its FLOPs."""
    from tailorrt.training.onnx_graph import GraphBuilder, SharedWeights

    net = methods.reference_network(backbone, classes).eval()
    if teacher is not None:
        net.load_state_dict(teacher_state_for(net, teacher), strict=True)
    size = backbone.spec.input_size
    g = GraphBuilder(name, SharedWeights(torch.nn.Module()))  # nothing shared: a model of its own
    methods.get(methods.REFERENCE).emit(g, net)
    kind = "stand-in" if teacher is None else "teacher"
    return g.model((3, size, size), classes, {"task": name, "kind": kind}), net.accounting(size)["flops"]


def per_task_model(mdir: TrainingDir, task: str, backbone: UniversalBackbone, out_dir: Path) -> PerTaskModel:
    """Write ``task``'s per-task model (its teacher, or a same-architecture stand-in) as a stand-alone graph."""
    from tailorrt.training.onnx_graph import save_graph

    teacher = teacher_checkpoint(mdir, task)
    model, flops = reference_graph(backbone, len(mdir.task_record(task).classes), task, teacher)
    path = out_dir / f"{task}.onnx"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_graph(model, path)
    return PerTaskModel(task, path, "stand-in" if teacher is None else "teacher", flops)


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
    from tailorrt.training.onnx_graph import IR_VERSION, OPSET

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model.SerializeToString(), {"x": x}, macs


def dense_limit(threads: int, rounds: int = 7) -> dict:
    """The best multiply-accumulates per second of a large MatMul and a large convolution in ONNX Runtime."""
    import onnxruntime as ort

    from tailorrt.export.speed import time_side_by_side
    from tailorrt.onnx_weight_store import session_options

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
import tailorrt.runtime, tailorrt.onnx_weight_store
args = json.loads(sys.argv[1])
proc = psutil.Process()
gc.collect(); base = proc.memory_info().rss
t0 = time.perf_counter()
x = np.zeros((1, 3, args["size"], args["size"]), np.float32)
store = None
if args["kind"] == "tailorrt":
    rt = tailorrt.runtime.Runtime(args["model_dir"], tasks=args["tasks"], backend=args["backend"],
                                  threads=args["threads"])
    run = lambda t: rt.logits(t, x)
    names = args["tasks"]
    store = getattr(rt.backend, "store", None)  # onnx: the weights it holds, each kept once
else:
    opts = tailorrt.onnx_weight_store.session_options(args["threads"])
    # one session per entry, even where two entries name the same graph (copies of a task)
    sessions = [onnxruntime.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in args["graphs"]]
    run = lambda i: sessions[i].run(["logits"], {"input": x})
    names = range(len(sessions))
loaded = time.perf_counter() - t0
for n in names:
    run(n)
gc.collect()
print(json.dumps({"base_rss": base, "rss_added": proc.memory_info().rss - base, "load_seconds": loaded,
                  "first_call_seconds": time.perf_counter() - t0 - loaded,
                  "weights_bytes": None if store is None else store.nbytes}))
"""


def probe_load(args: dict) -> dict:
    """Resident memory added and load time of one setting, measured in a fresh Python process."""
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"the load probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profiles(rt, task: str, per_task_graph: Path, batch: int, size: int, threads: int) -> dict:
    """Operator-type profiles of ``task`` as tailorrt runs it (shared weights, its own batch norms), as
    ``--fuse-weights`` runs it, and of its per-task model, at ``batch``."""
    from tailorrt.tools.onnx_profile import op_profile

    graph = rt.backend.graph_file(task)
    x = np.random.default_rng(1).standard_normal((batch, 3, size, size)).astype(np.float32)
    return {"batch": batch,
            "tailorrt": op_profile(graph, x, threads=threads, fuse=False),
            "tailorrt_fused": op_profile(graph, x, threads=threads, fuse=True),
            "per_task": op_profile(per_task_graph, x, threads=threads, fuse=True)}


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

    from tailorrt.export.speed import paired_ratio, time_side_by_side
    from tailorrt.onnx_weight_store import session_options
    from tailorrt.runtime import Runtime

    mdir = TrainingDir(req.model_dir)
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
    contenders = {"tailorrt": rt.logits}
    if req.backend == "onnx":  # the --fuse-weights trade: each task's own folded copy of the weights
        contenders["tailorrt_fused"] = Runtime(req.model_dir, tasks=tasks, backend="onnx", threads=threads,
                                               share_weights=False).logits
    low = None
    if req.precision != kinds.DEFAULT_PRECISION:  # the same tasks at low precision, on the backend that runs it
        low = Runtime(req.model_dir, tasks=tasks, backend=backend_of(req.precision), threads=threads,
                      precision=req.precision)
        contenders["tailorrt_low"] = low.logits
    sessions = {t: ort.InferenceSession(str(m.path), session_options(threads), providers=["CPUExecutionProvider"])
                for t, m in models.items()}

    report("measuring the dense limit")
    limit = dense_limit(threads, req.rounds)
    report("measuring load time and memory in fresh processes")
    probe = {"model_dir": str(mdir.root), "tasks": tasks, "backend": req.backend, "threads": threads, "size": size}
    load = {"tailorrt": probe_load({**probe, "kind": "tailorrt"}),
            "per_task": probe_load({**probe, "kind": "per-task", "graphs": [str(m.path) for m in models.values()]})}
    records = {t: mdir.task_record(t) for t in tasks}
    disk = {"tailorrt": bmeta.bytes + sum(records[t].pack.bytes for t in tasks),
            "per_task": sum(m.bytes for m in models.values())}

    per_task: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    for t in tasks:
        flops = records[t].metrics.flops
        row = {"method": records[t].method, "flops": flops, "per_task_flops": models[t].flops,
               "per_task_model": models[t].kind, "flop_ratio": round(models[t].flops / flops, 3),
               "batches": {}}
        for b in req.batches:
            report(f"timing {t} at batch {b}")
            x = rng.standard_normal((b, 3, size, size)).astype(np.float32)
            fns = {k: (lambda f=f: f(t, x)) for k, f in contenders.items()}
            res = time_side_by_side({**fns, "per_task": lambda: sessions[t].run(["logits"], {"input": x})},
                                    batch=b, rounds=req.rounds)
            speedup = paired_ratio(res, "tailorrt", "per_task")
            achieved = flops * res["tailorrt"]["images_per_s"] / 1e9
            row["batches"][str(b)] = {**res, "speedup": speedup["median"],
                                      "speedup_quartiles": [speedup["q1"], speedup["q3"]],
                                      **over_flop_ratio("", speedup, row["flop_ratio"]),
                                      "achieved_gmacs_per_s": round(achieved, 2),
                                      "fraction_of_limit": round(achieved / limit["best_gmacs_per_s"], 3)}
            if "tailorrt_fused" in res:
                row["batches"][str(b)].update(over_flop_ratio("fused_", paired_ratio(res, "tailorrt_fused", "per_task"),
                                                              row["flop_ratio"]))
            if "tailorrt_low" in res:
                row["batches"][str(b)]["low_precision_vs_tailorrt"] = paired_ratio(res, "tailorrt_low",
                                                                                   "tailorrt")["median"]
        if low is not None:  # the export's check, from the manifest the low-precision Runtime loaded
            row["low_precision_accuracy"] = low.backend.manifest.tasks[t].accuracy_check.to_json()
        if req.backend == "onnx":
            report(f"profiling {t} at batch {min(req.batches)}")
            row["profile"] = profiles(rt, t, models[t].path, min(req.batches), size, threads)
        per_task[t] = row

    report(f"streaming {req.requests} requests per stream with {req.clients} clients")
    images = {t: rng.standard_normal((1, 3, size, size)).astype(np.float32) for t in tasks}
    stream_result = {"tailorrt": streams(rt.logits, tasks, images, req),
                     "per_task": streams(lambda t, x: sessions[t].run(["logits"], {"input": x})[0], tasks, images,
                                         req)}
    result = {"request": req.to_json(), "backbone": {"name": bmeta.name, "bytes": bmeta.bytes},
              "machine": machine(), "versions": {**versions(), "onnxruntime": ort.__version__},
              "threads": threads, "limit": limit, "load": load, "disk_bytes": disk, "tasks": per_task,
              "stream": stream_result}
    if low is not None:
        result["precision"] = {"precision": req.precision, "backend": backend_of(req.precision), "cpu": cpu_summary()}
    result["summary"] = summary(result)
    return written(result, Path(req.out) if req.out else out_dir / "bench.json")


def over_flop_ratio(prefix: str, speedup: dict[str, float], flop_ratio: float) -> dict:
    """``speedup`` (a :func:`~tailorrt.export.speed.paired_ratio`) over the FLOP ratio, median and quartiles."""
    return {f"{prefix}speedup_over_flop_ratio": round(speedup["median"] / flop_ratio, 3),
            f"{prefix}speedup_over_flop_ratio_quartiles": [round(speedup["q1"] / flop_ratio, 3),
                                                           round(speedup["q3"] / flop_ratio, 3)]}


def written(result: dict, path: Path) -> dict:
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
             f"CPU: {r['machine'].get('cpu_model') or r['machine']['processor']} ({r['machine'].get('cpu', '?')}), "
             f"{r['machine']['cpus']} cores.", "",
             "| | resident memory added | load s | on disk |", "|---|---|---|---|"]
    for k, label in (("tailorrt", "tailorrt, one Runtime"), ("per_task", "one model per task, own session each")):
        lines.append(f"| {label} | {load[k]['rss_added'] / MB:.1f} MB | {load[k]['load_seconds']:.2f} | "
                     f"{disk[k] / MB:.1f} MB |")
    lim = r["limit"]
    lines += ["", f"Dense limit: {lim['best_gmacs_per_s']:.1f} GMAC/s (MatMul {lim['matmul']['gmacs_per_s']:.1f}, "
              f"conv {lim['conv']['gmacs_per_s']:.1f}).", "",
              "| task | per-task model | MFLOPs (per-task) | FLOP ratio | batch | tailorrt img/s | per-task img/s | "
              "speedup | speedup / FLOP ratio (quartiles) | fused: the same | GMAC/s | of limit |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t, row in r["tasks"].items():
        for b, m in row["batches"].items():
            fused = m.get("fused_speedup_over_flop_ratio")
            lines.append(f"| {t} | {row['per_task_model']} | {row['flops'] / 1e6:.1f} "
                         f"({row['per_task_flops'] / 1e6:.1f}) "
                         f"| {row['flop_ratio']:.2f} | {b} | {m['tailorrt']['images_per_s']:.0f} "
                         f"({m['tailorrt']['ms_min']:.2f}-{m['tailorrt']['ms_max']:.2f} ms) | "
                         f"{m['per_task']['images_per_s']:.0f} | {m['speedup']:.2f} | {with_quartiles(m, '')} "
                         f"| {'-' if fused is None else with_quartiles(m, 'fused_')} "
                         f"| {m['achieved_gmacs_per_s']:.1f} | {100 * m['fraction_of_limit']:.0f}% |")
    if "precision" in r:
        lines += ["", precision_summary(r)]
    profiled = {t: row["profile"] for t, row in r["tasks"].items() if "profile" in row}
    if profiled:
        batch = next(iter(profiled.values()))["batch"]
        lines += ["", f"Where the time goes at batch {batch} (ONNX Runtime's profiler, which adds a cost per node: "
                  "compare the rows with each other, not with the timings above):", "",
                  "| task | setting | nodes | µs per call | µs by operator (nodes) |", "|---|---|---|---|---|"]
        for t, prof in profiled.items():
            for k, label in (("tailorrt", "tailorrt"), ("tailorrt_fused", "tailorrt --fuse-weights"),
                             ("per_task", "per-task model")):
                p = prof[k]
                ops = ", ".join(f"{op} {us:.0f} ({p['nodes'][op]})" for op, us in list(p["kernel_us"].items())[:4])
                lines.append(f"| {t} | {label} | {sum(p['nodes'].values())} | {p['call_us']:.0f} | {ops} |")
    lines += ["", "| stream (batch limit " + str(r["request"]["max_batch"]) + ") | mixed img/s | p50 ms | p99 ms | "
              "one task at a time img/s | mixed / single |", "|---|---|---|---|---|---|"]
    for k, label in (("tailorrt", "tailorrt"), ("per_task", "per-task models")):
        s = r["stream"][k]
        lines.append(f"| {label} | {s['mixed']['images_per_s']:.0f} | {s['mixed']['p50_ms']:.1f} | "
                     f"{s['mixed']['p99_ms']:.1f} | {s['single_equivalent_images_per_s']:.0f} | "
                     f"{s['mixed_over_single']:.2f} |")
    return "\n".join(lines) + "\n"


def with_quartiles(m: dict, prefix: str) -> str:
    """A speedup over the FLOP ratio as the table shows it: the median and, in brackets, its quartiles."""
    q1, q3 = m[f"{prefix}speedup_over_flop_ratio_quartiles"]
    return f"{m[f'{prefix}speedup_over_flop_ratio']:.2f} ({q1:.2f}-{q3:.2f})"


def precision_summary(r: dict) -> str:
    """The low-precision rows of a bench result: speed next to the fp32 Runtime, and the export's accuracy check."""
    p = r["precision"]
    lines = [f"{p['precision']} ({p['backend']} backend, CPU: {p['cpu']}) against the fp32 Runtime "
             f"({r['request']['backend']}), side by side:", "",
             f"| task | batch | fp32 img/s | {p['precision']} img/s | {p['precision']} / fp32 | test accuracy fp32 -> "
             f"{p['precision']} |", "|---|---|---|---|---|---|"]
    for t, row in r["tasks"].items():
        acc = row["low_precision_accuracy"]
        for b, m in row["batches"].items():
            lines.append(f"| {t} | {b} | {m['tailorrt']['images_per_s']:.0f} | {m['tailorrt_low']['images_per_s']:.0f}"
                         f" | {m['low_precision_vs_tailorrt']:.2f}x | {acc['fp32_accuracy']:.2f}% -> "
                         f"{acc['accuracy']:.2f}% ({acc['images']} {acc['split']} images) |")
    return "\n".join(lines)
