"""What a model directory holds and what it weighs on disk, from its JSON files alone (no weights loaded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tailorrt import kinds
from tailorrt.kinds.onnx import ONNX
from tailorrt.kinds.tensorrt import TENSORRT
from tailorrt.pack import ModelDir
from tailorrt.records import BackboneRecord, TaskRecord


def info_rows(model_dir: str | Path, describe: Callable[[TaskRecord], str] | None = None
              ) -> tuple[BackboneRecord, list[dict]]:
    """The backbone's summary and one row per task: metrics, and bytes of its pack, ONNX graph and engine (the
    figures of a pack written without them are None). ``describe``: what training chose for a task, from its
    ``task.json`` (the training side's :func:`tailorrt.training.methods.describe`; a serving install has none, and
    the column is empty)."""
    mdir = ModelDir(model_dir)
    backbone = mdir.backbone_record()
    records = {kind.folder: mdir.export_record(kind.folder) for kind in kinds.kinds() if kind.task_files}
    exports = {folder: {} if r is None else r.tasks for folder, r in records.items()}
    rows = []
    for name in mdir.task_names():
        rec = mdir.task_record(name)
        m = rec.metrics
        graph, engine = exports[ONNX.folder].get(name), exports[TENSORRT.folder].get(name)
        rows.append({"task": name, "method": rec.method, "chosen_by_auto": rec.auto is not None,
                     "chosen": describe(rec) if m is not None and describe is not None else "",
                     "classes": len(rec.classes),
                     "accuracy": m and m.accuracy, "teacher_accuracy": m and m.teacher_accuracy,
                     "universal_blocks": m and f"{m.universal_blocks_kept}/{m.universal_blocks_total}",
                     "task_params": m and m.task_params, "shared_params_used": m and m.shared_params_used,
                     "flops": m and m.flops, "teacher_flops": m and m.teacher_flops, "pack_bytes": rec.pack.bytes,
                     "pack_vs_backbone": rec.pack.bytes / backbone.bytes,
                     "onnx_bytes": graph.file.bytes if graph else None,
                     "onnx_stale": bool(graph) and graph.pack_sha256 != rec.pack.sha256,
                     "engine_bytes": engine.file.bytes if engine else None,
                     "backbone_ok": rec.backbone_sha256 == backbone.sha256})
    return backbone, rows


def method_label(row: dict) -> str:
    """A row's method as tables show it: marked ``(auto)`` where ``--method auto`` chose it."""
    return row["method"] + " (auto)" * row["chosen_by_auto"]


def finetuned_bytes(backbone: BackboneRecord, classes: int) -> int:
    """On-disk fp32 size of one fully fine-tuned model for a task: the whole backbone plus its classifier."""
    spec = backbone.spec
    return backbone.bytes + 4 * (spec.feature_dim + 1) * classes


def size_summary(model_dir: str | Path, backbone: BackboneRecord, rows: list[dict]) -> dict:
    """Bytes on disk: the backbone once plus the task packs, the ONNX export, the engines, and the
    alternative of one fine-tuned model per task."""
    mdir = ModelDir(model_dir)
    packs = sum(r["pack_bytes"] for r in rows)
    out = {"backbone_bytes": backbone.bytes, "packs_bytes": packs, "tailorrt_bytes": backbone.bytes + packs,
           "finetuned_per_task_bytes": sum(finetuned_bytes(backbone, r["classes"]) for r in rows), "tasks": len(rows)}
    out["exports"] = {}
    for kind in kinds.kinds():
        record = mdir.export_record(kind.folder)
        if record is not None and kind.summary is not None:
            out["exports"][kind.folder] = {"summary": kind.summary(record), "tasks": len(record.tasks),
                                           "bytes": record.bytes}
    return out
