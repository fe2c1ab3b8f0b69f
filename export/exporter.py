"""``tailor export``: task packs to ONNX graphs (one shared weight file) and TensorRT engines.

```
<model-dir>/onnx/universal.data     universal conv weights, once, external data of every graph
                 <task>.onnx        one task graph: private initializers inline, shared ones by reference
                 export.json        manifest: files, sha256, sizes, opset, IR version, I/O, parity (, speed)
<model-dir>/trt/<task>.engine       one TensorRT engine per task (batch 1..max_batch)
                timing.cache        reused across tasks and exports
                export.json
```
Each folder is assembled in ``<model-dir>/.work`` and swapped in whole, so an interrupted or
failed export leaves the previous one untouched. Tasks not named in an export are carried over
from the previous one.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil

from tailorrt import kinds
from tailorrt.errors import ExportError, PackError
from tailorrt.export import low_precision, parity, trt_export  # noqa: F401 - low_precision's, trt_export's steps register
from tailorrt.export.common import (
    FP32_TOLERANCE,
    STEPS,
    ExportRequest,
    Report,
    TaskNetwork,
    assemble_export,
    bench_task,
    export_step,
    same_shared,
    torch_logits,
)
from tailorrt.export.cpu_sessions import cpu_session
from tailorrt.files import sha256_file
from tailorrt.kinds.onnx import ONNX
from tailorrt.kinds.tensorrt import TENSORRT
from tailorrt.precision import check_precision
from tailorrt.records import FORMAT_VERSION, BackboneRecord, ExportRecord
from tailorrt.training import methods
from tailorrt.training.backbones import UniversalBackbone
from tailorrt.training.datasets import DataCheck, load_task
from tailorrt.training.onnx_graph import (
    INPUT,
    IR_VERSION,
    LOGITS,
    OPSET,
    PROBS,
    SHARED_FILE,
    GraphBuilder,
    SharedWeights,
    save_graph,
)
from tailorrt.training.onnx_layers import choose_fused
from tailorrt.training.packs import TrainingDir, machine, versions

__all__ = ["FP32_TOLERANCE", "ExportRequest", "export_model"]


def export_model(req: ExportRequest, report: Report = lambda _: None) -> dict[str, ExportRecord | None]:
    """Export the requested tasks; returns the records written by folder, ``{"onnx": ..., "trt": ... or None}``
    and, with a low ``req.precision``, its record under ``"onnx-int8"`` or ``"bf16"``."""
    req.validate()
    wanted = [k for k in kinds.kinds() if k.wanted(req)]
    for kind in wanted:  # before any work: a CPU without bf16, or no TensorRT, fails in a second
        if kind.precision not in (None, kinds.DEFAULT_PRECISION):
            check_precision(kind.precision, kind.backend)
        if kind.folder == TENSORRT.folder:
            from tailorrt.training.trt_runner import require_tensorrt

            require_tensorrt()
    mdir = TrainingDir(req.model_dir)
    backbone, bmeta = mdir.load_backbone()
    names = _task_names(mdir, req.tasks)
    _clean_stale_work(mdir)
    networks = [_load_network(mdir, name, backbone, bmeta.sha256, req, report) for name in names]
    ctx = ExportContext(mdir, bmeta, SharedWeights(backbone), networks, req, report)
    for kind in wanted:  # registration order: the fp32 graphs first, which the others are made from
        ctx.results[kind.folder] = STEPS[kind.folder](ctx)  # the record it wrote
    return {ONNX.folder: None, TENSORRT.folder: None, **ctx.results}  # "trt" is None without --trt


@export_step(ONNX)
def onnx_step(ctx: ExportContext) -> ExportRecord:
    """The fp32 ONNX export kind's step (:mod:`tailorrt.kinds.onnx`)."""
    return export_onnx(ctx.mdir, ctx.bmeta, ctx.shared, ctx.networks, ctx.req, ctx.report)


@dataclass
class ExportContext:
    """What every export kind's step reads: the model dir, the tasks' networks and data, and the manifests the
    kinds before it wrote (``results``, by folder)."""

    mdir: TrainingDir
    bmeta: BackboneRecord
    shared: SharedWeights
    networks: list[TaskNetwork]
    req: ExportRequest
    report: Report
    results: dict[str, ExportRecord] = field(default_factory=dict)


def _task_names(mdir: TrainingDir, wanted: list[str] | None) -> list[str]:
    have = mdir.task_names()
    if not have:
        raise PackError(f"no task packs in {mdir.root}; train one first (tailor train --task ...)")
    if not wanted:
        return have
    for name in wanted:
        mdir.task_record(name)  # raises with the list of tasks
    return list(dict.fromkeys(wanted))


def _load_network(mdir: TrainingDir, name: str, backbone: UniversalBackbone, sha: str, req: ExportRequest,
                  report: Report) -> TaskNetwork:
    """A task's network and its data for the parity and calibration reads (files checked as training checks them,
    through the model dir's cache)."""
    student, rec = mdir.load_model(name, backbone, sha)
    spec = rec.data_spec
    if spec is None:
        raise ExportError(f"task {name!r} does not record the data it was trained on, which the export checks")
    data = load_task(spec, data_dir=Path(req.data_dir), preprocess=rec.preprocess,
                     download=req.download, check=DataCheck(cache=mdir.check_cache, report=report))
    n = min(req.parity_images, len(data.val))
    if n == 0:
        raise ExportError(f"task {name!r} has no validation images to check the export against")
    images = np.stack([data.val[i][0].numpy() for i in range(n)]).astype(np.float32)
    return TaskNetwork(name, rec, student, images, data)


def _clean_stale_work(mdir: TrainingDir) -> None:
    """Remove export folders left by killed exports (their process is gone)."""
    work = mdir.root / ".work"
    if not work.is_dir():
        return
    for d in work.glob("export-*"):
        m = re.match(r"export-\w+-(\d+)-", d.name)
        if m and not psutil.pid_exists(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- ONNX


def export_onnx(mdir: TrainingDir, bmeta: BackboneRecord, shared: SharedWeights, networks: list[TaskNetwork],
                req: ExportRequest, report: Report) -> ExportRecord:
    """Write ``onnx/`` (shared weights once, one graph per task), checked against PyTorch."""

    def prepare(tmp: Path) -> dict:
        shared.write(tmp / SHARED_FILE)
        return {"file": SHARED_FILE, "sha256": sha256_file(tmp / SHARED_FILE),
                "bytes": (tmp / SHARED_FILE).stat().st_size, "tensors": len(shared.tensors)}

    def export_task(tmp: Path, net: TaskNetwork) -> dict:
        entry = _export_task_graph(tmp, shared, bmeta, net, req)
        p = entry["parity"]
        report(f"onnx {net.name}: {entry['bytes'] / 1e6:.2f} MB, parity max |logit diff| "
               f"{p['max_abs_logit_diff']:.1e}, top-1 agreement {100 * p['top1_agreement']:.2f}% "
               f"on {p['images']} val images")
        return entry

    def manifest(tasks: dict, facts: dict) -> dict:
        return {"format_version": FORMAT_VERSION, "kind": "onnx",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "backbone": {"name": bmeta.name, "sha256": bmeta.sha256},
                "opset": OPSET, "ir_version": IR_VERSION, "shared": facts, "tasks": tasks,
                "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": ort.__version__},
                "machine": machine()}

    return assemble_export(mdir, "onnx", networks, report, prepare=prepare, export_task=export_task,
                           same=same_shared, manifest=manifest)


def _export_task_graph(tmp: Path, shared: SharedWeights, bmeta: BackboneRecord, net: TaskNetwork, req: ExportRequest
                       ) -> dict:
    rec = net.record
    budget = int(req.fuse_budget * shared.nbytes)
    g = GraphBuilder(net.name, shared, choose_fused(net.module, shared, net.input_shape, budget))
    methods.for_record(rec).emit(g, net.module)
    classes = len(rec.classes)
    props = {"tailorrt.task": net.name, "tailorrt.method": rec.method, "tailorrt.backbone_sha256": bmeta.sha256,
             "tailorrt.shared_file": SHARED_FILE, "tailorrt.pack_sha256": rec.pack.sha256,
             "tailorrt.preprocess": _json(rec.preprocess.to_json()), "tailorrt.classes": _json(list(rec.classes))}
    model = g.model(net.input_shape, classes, props)
    path = tmp / f"{net.name}.onnx"
    save_graph(model, path)
    session = cpu_session(path)
    check = parity.compare(lambda x: torch_logits(net.module, x), lambda x: session.run([LOGITS], {INPUT: x})[0],
                           net.images)
    limit = parity.allowed(check, req.tolerance)
    check.update({"reference": "pytorch", "runtime": "onnxruntime CPUExecutionProvider", "split": "val",
                  "tolerance": req.tolerance, "allowed_diff": limit})
    if not check["max_abs_logit_diff"] <= limit:
        raise ExportError(f"task {net.name!r}: ONNX Runtime's logits differ from PyTorch's by up to "
                          f"{check['max_abs_logit_diff']:.2e} (allowed {limit:.1e}: {req.tolerance:.0e} of the "
                          f"logits' largest magnitude, {check['max_abs_logit']:.3g}, or of 1); the export was not "
                          "written and the previous one is kept")
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    batch = ["batch"]
    entry = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "method": rec.method,
             "pack_sha256": rec.pack.sha256, "classes": classes,
             "inputs": [{"name": INPUT, "dtype": "float32", "shape": batch + list(net.input_shape)}],
             "outputs": [{"name": LOGITS, "dtype": "float32", "shape": batch + [classes]},
                         {"name": PROBS, "dtype": "float32", "shape": batch + [classes]}],
             "preprocess": rec.preprocess.to_json(), "shared_initializers": len(g.shared_used),
             "fused_copies": {"tensors": len(g.fused_used),
                              "bytes": int(sum(shared.tensors[n].nbytes for n in g.fused_used)),
                              "budget_bytes": budget},
             "private_initializers": len(g.private), "private_bytes": int(sum(a.nbytes for a in g.private.values())),
             "ops": dict(sorted(ops.items())), "parity": check}
    if req.bench:
        entry["speed"] = bench_task(net, session)
    return entry


def _json(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


