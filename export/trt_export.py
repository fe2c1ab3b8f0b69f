"""The ``--trt`` half of ``tailor export``: one engine per task from its ONNX graph, checked against
ONNX Runtime, written to ``<model-dir>/trt/`` in one swap."""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import torch

from tailorrt.errors import ExportError
from tailorrt.export import parity
from tailorrt.export.common import (
    MANIFEST,
    TIMING_CACHE,
    TRT_MIN_AGREEMENT,
    TRT_TOLERANCE,
    ExportRequest,
    Report,
    TaskNetwork,
    bench_task,
    carry_over,
    export_staging,
    export_step,
    previous_export,
    write_manifest,
)
from tailorrt.export.cpu_sessions import cpu_session
from tailorrt.export.trt_build import gpu_name, timed_build
from tailorrt.files import atomic_path, replace_dir, sha256_file
from tailorrt.kinds.tensorrt import TENSORRT
from tailorrt.pack import ModelDir
from tailorrt.records import FORMAT_VERSION, EngineSettings, ExportRecord
from tailorrt.training.onnx_graph import INPUT, LOGITS
from tailorrt.training.packs import machine, versions
from tailorrt.training.trt_runner import EngineRunner


def export_trt(trt: ModuleType, mdir: ModelDir, onnx: ExportRecord, networks: list[TaskNetwork],
               req: ExportRequest, report: Report) -> ExportRecord:
    """Build, check and write one engine per task; the timing cache carries over between builds."""
    folder, onnx_dir = mdir.export_dir("trt"), mdir.export_dir("onnx")
    tmp = export_staging(mdir, "trt")
    try:
        settings = EngineSettings(req.fp16, req.max_batch, trt.__version__, gpu_name())
        prev = previous_export(mdir, "trt", report)
        cache = _timing_cache(folder, prev, report)
        tasks = carry_over(prev, folder, tmp, {n.name for n in networks},
                           lambda p: p.engines == settings and p.backbone_sha256 == onnx.backbone_sha256, report)
        for net in networks:
            graph = onnx.tasks[net.name].file
            onnx_path = onnx_dir / graph.name
            plan, cache, seconds = timed_build(trt, onnx_path, input_shape=net.input_shape, max_batch=req.max_batch,
                                               fp16=req.fp16, timing_cache=cache)
            engine_path = tmp / f"{net.name}.engine"
            with atomic_path(engine_path) as t:
                t.write_bytes(plan)
            runner = EngineRunner(trt, plan)
            session = cpu_session(onnx_path)
            check = parity.compare(lambda x: session.run([LOGITS], {INPUT: x})[0], runner.logits, net.images,
                                   batch_size=req.max_batch)
            tol, agree = TRT_TOLERANCE[req.fp16], TRT_MIN_AGREEMENT[req.fp16]
            limit = parity.allowed(check, tol)
            check.update({"reference": "onnxruntime CPUExecutionProvider", "runtime": "tensorrt", "split": "val",
                          "tolerance": tol, "allowed_diff": limit, "min_top1_agreement": agree,
                          "precision": "fp16" if req.fp16 else "fp32"})
            if not (check["max_abs_logit_diff"] <= limit and check["top1_agreement"] >= agree):
                raise ExportError(f"task {net.name!r}: the TensorRT engine differs from ONNX Runtime (max |logit diff| "
                                  f"{check['max_abs_logit_diff']:.2e}, allowed {limit:.1e}; top-1 agreement "
                                  f"{check['top1_agreement']:.4f}, needed {agree}); nothing was written")
            tasks[net.name] = {"file": engine_path.name, "sha256": sha256_file(engine_path),
                               "bytes": engine_path.stat().st_size,
                               "onnx_sha256": graph.sha256,
                               "pack_sha256": net.record.pack.sha256,
                               "build_seconds": round(seconds, 2), "parity": check}
            if req.bench:
                tasks[net.name]["speed"] = bench_task(net, session, extra={"tensorrt": runner.logits},
                                                      batches=tuple(sorted({1, min(32, req.max_batch)})))
                torch.cuda.synchronize()
            report(f"trt {net.name}: {engine_path.stat().st_size / 1e6:.2f} MB engine in {seconds:.1f} s, parity max "
                   f"|logit diff| {check['max_abs_logit_diff']:.1e} vs ONNX Runtime")
        with atomic_path(tmp / TIMING_CACHE) as t:
            t.write_bytes(cache)
        manifest = {"format_version": FORMAT_VERSION, "kind": "tensorrt", **asdict(settings),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "backbone_sha256": onnx.backbone_sha256,
                    "profile": {"input": INPUT, "min_batch": 1, "opt_batch": req.max_batch, "max_batch": req.max_batch},
                    "timing_cache": {"file": TIMING_CACHE, "bytes": len(cache),
                                     "sha256": sha256_file(tmp / TIMING_CACHE)},
                    "tasks": dict(sorted(tasks.items())), "versions": versions(), "machine": machine()}
        record = write_manifest(tmp / MANIFEST, manifest)
        replace_dir(tmp, folder)
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _timing_cache(folder: Path, prev: ExportRecord | None, report: Report) -> bytes:
    """The previous export's timing cache, if its sha256 is the one recorded for it (else start a new one)."""
    path = folder / TIMING_CACHE
    recorded = prev.timing_cache if prev else None
    if not path.is_file():
        return b""
    data = path.read_bytes()
    if recorded is None or hashlib.sha256(data).hexdigest() != recorded.sha256:
        report(f"{path} does not match the sha256 recorded for it; building with a new timing cache")
        return b""
    return data


@export_step(TENSORRT)
def trt_step(ctx) -> ExportRecord:
    """The TensorRT export kind's step (:mod:`tailorrt.kinds.tensorrt`): engines from the ONNX graphs just written."""
    from tailorrt.training.trt_runner import require_tensorrt

    return export_trt(require_tensorrt(), ctx.mdir, ctx.results["onnx"], ctx.networks, ctx.req, ctx.report)
