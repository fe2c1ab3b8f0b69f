"""``tailor export --precision int8|bf16``: low-precision exports, each checked against fp32 on the task's test
images and refused when it loses more than ``--max-precision-drop`` points of accuracy.

```
<model-dir>/onnx-int8/universal-int8.data   the universal conv weights as int8, once (export.quantize)
                      <task>.onnx           the task's QDQ graph: its scales, biases and own blocks inline
                      <task>.check.safetensors  a few images and their int8 logits, re-run at every load
                      export.json
<model-dir>/bf16/export.json                per task: the accuracy check of the torch backend under
                                            torch.autocast(bfloat16); the runtime needs it to serve bf16
```
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.numpy import save_file

from tailorrt.cpu import cpu_summary
from tailorrt.errors import ExportError
from tailorrt.export import parity
from tailorrt.export.common import (
    ExportRequest,
    Report,
    TaskNetwork,
    assemble_export,
    export_step,
    same_shared,
    torch_logits,
)
from tailorrt.export.cpu_sessions import cpu_session
from tailorrt.export.quantize import SHARED_INT8_FILE, CanonicalWeights, quantize_task
from tailorrt.files import sha256_file
from tailorrt.kinds.bf16 import BF16
from tailorrt.kinds.onnx_int8 import INT8
from tailorrt.pack import ModelDir
from tailorrt.records import FORMAT_VERSION, AccuracyCheck, BackboneRecord, ExportRecord
from tailorrt.training.datasets import TaskData
from tailorrt.training.onnx_graph import INPUT, LOGITS
from tailorrt.training.packs import machine, versions

Forward = Callable[[np.ndarray], np.ndarray]
CHECK_IMAGES = 8  # images (and their int8 logits) that every load of an int8 task re-runs
BATCH = 64


def batches(dataset, count: int, *, seed: int | None = None, labels: bool = False) -> Iterator:
    """``count`` images of ``dataset`` (a seeded random subset, or the first ones) as float32 batches."""
    n = min(count, len(dataset))
    order = np.random.default_rng(seed).permutation(len(dataset))[:n] if seed is not None else np.arange(n)
    for start in range(0, n, BATCH):
        items = [dataset[int(i)] for i in order[start:start + BATCH]]
        x = np.stack([np.asarray(img, np.float32) for img, _ in items])
        yield (x, np.array([int(y) for _, y in items])) if labels else x


def accuracy_check(reference: Forward, candidate: Forward, data: TaskData, count: int) -> AccuracyCheck:
    """fp32 and low-precision accuracy side by side on the test split (validation when it has none)."""
    split = "test" if len(data.test) else "val"
    dataset = getattr(data, split)
    if len(dataset) == 0:
        raise ExportError(f"task {data.name!r} has no test or validation images to check a low precision on")
    tally = parity.Agreement()
    for x, y in batches(dataset, count, labels=True):
        tally.add(reference(x), candidate(x), y)
    fp32, low = 100 * tally.right_reference / tally.images, 100 * tally.right / tally.images
    return AccuracyCheck.from_json({"split": split, **tally.result(), "fp32_accuracy": round(fp32, 4),
                                    "accuracy": round(low, 4), "drop_points": round(fp32 - low, 4)})


def refuse_drop(task: str, precision: str, check: AccuracyCheck, req: ExportRequest) -> None:
    if check.drop_points > req.max_precision_drop:
        raise ExportError(f"task {task!r}: {precision} loses {check.drop_points:.2f} points of {check.split} "
                          f"accuracy ({check.fp32_accuracy:.2f}% -> {check.accuracy:.2f}% on "
                          f"{check.images} images), more than --max-precision-drop {req.max_precision_drop}; "
                          f"the {precision} export "
                          "was not written and the previous one is kept")


def report_check(report: Report, task: str, precision: str, check: AccuracyCheck, extra: str = "") -> None:
    report(f"{precision} {task}: {check.split} accuracy {check.accuracy:.2f}% vs fp32 "
           f"{check.fp32_accuracy:.2f}% on {check.images} images (drop {check.drop_points:+.2f} points), "
           f"top-1 agreement {100 * check.top1_agreement:.2f}%{extra}")


def manifest_of(kind: str, bmeta: BackboneRecord, tasks: dict, req: ExportRequest, **extra) -> dict:
    return {"format_version": FORMAT_VERSION, "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backbone": {"name": bmeta.name, "sha256": bmeta.sha256}, **extra,
            "max_drop": req.max_precision_drop, "tasks": dict(sorted(tasks.items())), "cpu": cpu_summary(),
            "versions": {**versions(), "onnxruntime": ort.__version__}, "machine": machine()}


# ---------------------------------------------------------------------------------------------- int8


def export_int8(mdir: ModelDir, bmeta: BackboneRecord, shared_tensors: dict[str, np.ndarray],
                networks: list[TaskNetwork],
                req: ExportRequest, report: Report) -> ExportRecord:
    """Write ``onnx-int8/`` from the fp32 graphs of ``onnx/`` (written just before)."""
    canonical = CanonicalWeights.of(shared_tensors)

    def prepare(tmp: Path) -> dict:
        canonical.write(tmp / SHARED_INT8_FILE)
        return {"file": SHARED_INT8_FILE, "sha256": sha256_file(tmp / SHARED_INT8_FILE),
                "bytes": (tmp / SHARED_INT8_FILE).stat().st_size, "tensors": len(canonical.q),
                "int8_bytes": canonical.nbytes}

    def manifest(tasks: dict, facts: dict) -> dict:
        return manifest_of("onnx-int8", bmeta, tasks, req, shared=facts,
                           weights="int8 per output channel, symmetric, 7-bit (reduce_range)",
                           activations="uint8 per tensor, min/max of the calibration images")

    return assemble_export(mdir, "onnx-int8", networks, report, prepare=prepare,
                           same=same_shared,
                           export_task=lambda tmp, net: _int8_task(mdir, tmp, canonical, net, req, report),
                           manifest=manifest)


def _int8_task(mdir: ModelDir, tmp: Path, canonical: CanonicalWeights, net: TaskNetwork, req: ExportRequest,
               report: Report) -> dict:
    data = net.data
    if len(data.train) == 0:
        raise ExportError(f"task {net.name!r} has no training images to calibrate int8 on")
    path = tmp / f"{net.name}.onnx"
    counts = quantize_task(mdir.export_dir("onnx") / path.name, path, canonical,
                           lambda: batches(data.train, req.calibration_images, seed=0))
    fp32, int8 = cpu_session(mdir.export_dir("onnx") / path.name), cpu_session(path)
    check = accuracy_check(_run(fp32), _run(int8), data, req.check_images)
    refuse_drop(net.name, "int8", check, req)
    check_file = tmp / f"{net.name}.check.safetensors"
    x = np.ascontiguousarray(net.images[:CHECK_IMAGES], np.float32)
    save_file({"input": x, "logits": _run(int8)(x)}, str(check_file))
    report_check(report, net.name, "int8", check,
                 f", {counts['shared_int8_bytes'] / 1e6:.2f} MB of int8 weights shared, "
                 f"{counts['private_int8_bytes'] / 1e6:.2f} MB its own")
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "method": net.record.method,
            "pack_sha256": net.record.pack.sha256, "classes": len(net.record.classes),
            "calibration": {"split": "train", "images": min(req.calibration_images, len(data.train))},
            **counts, "accuracy_check": check.to_json(),
            "check": {"file": check_file.name, "sha256": sha256_file(check_file), "images": len(x)}}


def _run(session: ort.InferenceSession) -> Forward:
    return lambda x: session.run([LOGITS], {INPUT: np.ascontiguousarray(x, np.float32)})[0]


# ---------------------------------------------------------------------------------------------- bf16


def bf16_logits(module: torch.nn.Module, x: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Logits of ``module`` under ``torch.autocast(bfloat16)``, as float32."""
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        return module(torch.from_numpy(x).to(device)).float().cpu().numpy()


def export_bf16(mdir: ModelDir, bmeta: BackboneRecord, networks: list[TaskNetwork], req: ExportRequest, report: Report
                ) -> ExportRecord:
    """Write ``bf16/export.json``: each task's accuracy under bf16 autocast against fp32 (no weights: the torch
    backend runs the fp32 packs under autocast)."""

    def export_task(tmp: Path, net: TaskNetwork) -> dict:
        net.module.eval()
        check = accuracy_check(lambda x: torch_logits(net.module, x), lambda x: bf16_logits(net.module, x),
                               net.data, req.check_images)
        refuse_drop(net.name, "bf16", check, req)
        report_check(report, net.name, "bf16", check)
        return {"method": net.record.method, "pack_sha256": net.record.pack.sha256,
                "classes": len(net.record.classes), "accuracy_check": check.to_json()}

    return assemble_export(mdir, "bf16", networks, report, prepare=lambda tmp: {}, export_task=export_task,
                           same=lambda prev, facts: prev.backbone_sha256 == bmeta.sha256,
                           manifest=lambda tasks, facts: manifest_of("bf16", bmeta, tasks, req,
                                                                     runs="torch backend, torch.autocast(bfloat16)"))


@export_step(INT8)
def int8_step(ctx) -> ExportRecord:
    """The int8 ONNX export kind's step (:mod:`tailorrt.kinds.onnx_int8`), from the graphs ``onnx/`` just got."""
    return export_int8(ctx.mdir, ctx.bmeta, ctx.shared.tensors, ctx.networks, ctx.req, ctx.report)


@export_step(BF16)
def bf16_step(ctx) -> ExportRecord:
    """The bf16 export kind's step (:mod:`tailorrt.kinds.bf16`)."""
    return export_bf16(ctx.mdir, ctx.bmeta, ctx.networks, ctx.req, ctx.report)
