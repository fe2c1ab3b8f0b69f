"""What a model directory holds and what it weighs on disk, from its JSON files alone (no weights loaded)."""

from __future__ import annotations

from pathlib import Path

from tailorrt import kinds, methods
from tailorrt.backbones import BackboneSpec
from tailorrt.pack import ModelDir, pack_file


def info_rows(model_dir: str | Path) -> tuple[dict, list[dict]]:
    """The backbone's summary and one row per task: metrics, and bytes of its pack, ONNX graph and engine."""
    mdir = ModelDir(model_dir)
    bmeta = mdir.backbone_meta()
    exports = {kind: (mdir.export_manifest(kind) or {}).get("tasks", {}) for kind in ("onnx", "trt")}
    rows = []
    for name in mdir.task_names():
        meta = mdir.task_meta(name)
        m = meta["metrics"]
        pack = pack_file(meta)
        onnx_entry, trt_entry = exports["onnx"].get(name), exports["trt"].get(name)
        rows.append({"task": name, "method": meta["method"], "chosen_by_auto": "auto" in meta,
                     "chosen": methods.for_record(meta).describe(meta),
                     "classes": len(meta["classes"]),
                     "accuracy": m["accuracy"], "teacher_accuracy": m["teacher_accuracy"],
                     "universal_blocks": f"{m['universal_blocks_kept']}/{m['universal_blocks_total']}",
                     "task_params": m["task_params"], "shared_params_used": m["shared_params_used"],
                     "flops": m["flops"], "teacher_flops": m["teacher_flops"], "pack_bytes": pack["bytes"],
                     "pack_vs_backbone": pack["bytes"] / bmeta["bytes"],
                     "onnx_bytes": onnx_entry["bytes"] if onnx_entry else None,
                     "onnx_stale": bool(onnx_entry) and onnx_entry.get("pack_sha256") != pack["sha256"],
                     "engine_bytes": trt_entry["bytes"] if trt_entry else None,
                     "backbone_ok": meta["backbone_sha256"] == bmeta["sha256"]})
    return bmeta, rows


def method_label(row: dict) -> str:
    """A row's method as tables show it: marked ``(auto)`` where ``--method auto`` chose it."""
    return row["method"] + " (auto)" * row["chosen_by_auto"]


def finetuned_bytes(bmeta: dict, classes: int) -> int:
    """On-disk fp32 size of one fully fine-tuned model for a task: the whole backbone plus its classifier."""
    spec = BackboneSpec.from_json(bmeta["spec"])
    return bmeta["bytes"] + 4 * (spec.feature_dim + 1) * classes


def size_summary(model_dir: str | Path, bmeta: dict, rows: list[dict]) -> dict:
    """Bytes on disk: the backbone once plus the task packs, the ONNX export, the engines, and the
    alternative of one fine-tuned model per task."""
    mdir = ModelDir(model_dir)
    packs = sum(r["pack_bytes"] for r in rows)
    out = {"backbone_bytes": bmeta["bytes"], "packs_bytes": packs, "tailorrt_bytes": bmeta["bytes"] + packs,
           "finetuned_per_task_bytes": sum(finetuned_bytes(bmeta, r["classes"]) for r in rows), "tasks": len(rows)}
    out["exports"] = {}
    for kind in kinds.kinds():
        manifest = mdir.export_manifest(kind.folder)
        if manifest and kind.summary is not None:
            out["exports"][kind.folder] = {"summary": kind.summary(manifest), "tasks": len(manifest["tasks"]),
                                           "bytes": export_bytes(manifest)}
    return out


def export_bytes(manifest: dict) -> int:
    """Bytes of an export's files: the shared one (if any) and each task's."""
    shared = manifest.get("shared") or {}
    return shared.get("bytes", 0) + sum(t.get("bytes", 0) for t in manifest["tasks"].values())
