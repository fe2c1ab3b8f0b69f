"""``tailor compare``: several methods on one task, side by side, from packs trained here (reused when present)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tailorrt.errors import ConfigError
from tailorrt.export.speed import time_side_by_side
from tailorrt.files import write_json
from tailorrt.records import TaskRecord
from tailorrt.training import methods
from tailorrt.training.datasets import pack_name
from tailorrt.training.methods import REFERENCE
from tailorrt.training.packs import TrainingDir
from tailorrt.training.phases import Progress
from tailorrt.training.train import TrainRequest, train_task


@dataclass
class CompareRequest:
    task: str
    methods: list[str]
    model_dir: str = "runs"
    data_dir: str = "data"
    download: bool = True
    retrain: bool = False  # train again even where a pack of the method exists
    batch: int = 32  # batch size of the images/s measurement
    out: str | None = None  # folder for compare.json and compare.md; default <model-dir>/compare/<task>


def _check_methods(req: CompareRequest, mdir: TrainingDir) -> None:
    if not req.methods:
        raise ConfigError("give at least one method, e.g. --methods nettailor,flex,linear,finetune-all")
    spec = mdir.backbone_record().spec if mdir.has_backbone() else None
    for method in req.methods:  # the options of each are checked where the model dir has its backbone already
        methods.get(method, spec)


def _reusable(mdir: TrainingDir, name: str, task: str) -> bool:
    if name not in mdir.task_names() or not mdir.has_backbone():
        return False
    rec = mdir.task_record(name)
    return rec.data_spec == task and rec.backbone_sha256 == mdir.backbone_record().sha256


def compare(req: CompareRequest, *, device: torch.device, progress: Progress | None = None,
            report: Callable[[str], None] = print) -> dict:
    """Train (or reuse) each method's pack for ``req.task`` and measure them side by side."""
    mdir = TrainingDir(req.model_dir)
    _check_methods(req, mdir)
    names = {}
    for method in dict.fromkeys(req.methods):
        name = methods.pack_name(pack_name(req.task), method)
        if req.retrain or not _reusable(mdir, name, req.task):
            report(f"training {req.task} with {method}")
            train_task(TrainRequest(task=req.task, model_dir=req.model_dir, data_dir=req.data_dir,
                                    download=req.download, method=method), device=device, progress=progress)
        else:
            report(f"reusing {mdir.tasks_dir / name}")
        names[method] = name
    backbone, b = mdir.load_backbone()
    models, rows = {}, []
    for method, name in names.items():
        model, rec = mdir.load_model(name, backbone, b.sha256)
        models[method] = model.to(device).eval()
        m = rec.metrics
        rows.append({"method": method, "pack": name, "accuracy": m.accuracy, "task_params": m.task_params,
                     "total_params_used": m.task_params + m.shared_params_used, "flops": m.flops,
                     "train_seconds": training_seconds(rec), "pack_bytes": rec.pack.bytes,
                     "chosen": methods.for_record(rec).describe(rec)})
    speed = _images_per_s(models, backbone.spec.input_size, req.batch, device)
    reference = next((r["accuracy"] for r in rows if r["method"] == REFERENCE), None)
    for r in rows:
        r["images_per_s"] = speed[r["method"]]
        r["vs_finetune_all"] = None if reference is None else round(r["accuracy"] - reference, 3)
    result = {"task": req.task, "backbone": {"name": b.name, "sha256": b.sha256, "params": b.params, "bytes": b.bytes},
              "reference": REFERENCE if reference is not None else None, "speed_batch": req.batch,
              "device": str(device), "threads": torch.get_num_threads(), "methods": rows}
    out = Path(req.out) if req.out else mdir.root / "compare" / pack_name(req.task)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", result)
    (out / "compare.md").write_text(markdown(result))
    result["written"] = [str(out / "compare.json"), str(out / "compare.md")]
    return result


def training_seconds(rec: TaskRecord) -> float:
    """Compute time of a pack's training: its phases (as recorded, so resumed runs count in full) plus the
    steps that train nothing (flex-tuning's scoring), as the method records them."""
    return methods.for_record(rec).training_seconds(rec)


@torch.inference_mode()
def _images_per_s(models: dict, size: int, batch: int, device: torch.device) -> dict[str, float]:
    """PyTorch eager images/s of each model at ``batch``, timed side by side in interleaved rounds."""
    x = torch.randn(batch, 3, size, size, device=device)
    res = time_side_by_side({m: (lambda net=net: net(x)) for m, net in models.items()}, batch=batch)
    return {m: r["images_per_s"] for m, r in res.items()}


def markdown(result: dict) -> str:
    """The comparison as a markdown table."""
    ref = result["reference"]
    lines = [f"# {result['task']} on {result['backbone']['name']}", "",
             f"| method | test acc % | vs {ref or REFERENCE} | task-owned params | total params used | MFLOPs "
             f"| pack KB | train s | images/s (batch {result['speed_batch']}) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["methods"]:
        vs = "-" if r["vs_finetune_all"] is None else f"{r['vs_finetune_all']:+.2f}"
        unit = f" ({r['chosen']})" if r["chosen"] else ""
        lines.append(f"| {r['method']}{unit} | {r['accuracy']:.2f} | {vs} | {r['task_params']:,} | "
                     f"{r['total_params_used']:,} | {r['flops'] / 1e6:.1f} | {r['pack_bytes'] / 1e3:.1f} | "
                     f"{r['train_seconds']:.0f} | {r['images_per_s']:.0f} |")
    lines += ["", f"Speed: PyTorch eager on {result['device']}, {result['threads']} threads, interleaved rounds, "
              "median."]
    return "\n".join(lines) + "\n"
