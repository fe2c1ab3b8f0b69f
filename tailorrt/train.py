"""Training a task into a model directory, re-evaluating a saved pack, and summarising a model dir."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tailorrt.backbones import BackboneSpec, UniversalBackbone, build_backbone, get_spec
from tailorrt.datasets import Preprocess, load_task, pack_name
from tailorrt.errors import ConfigError
from tailorrt.io import read_json, write_json
from tailorrt.nettailor import NetTailorConfig, train_nettailor
from tailorrt.pack import ModelDir, machine, preprocess_of, versions
from tailorrt.training import Progress, Trainer, accuracy
from tailorrt.transfer import TransferConfig, check_method, train_transfer
from tailorrt.world import BUILTIN_TASKS


@dataclass
class TrainRequest:
    """Everything ``tailor train`` needs; saved in the work dir so ``--resume`` continues the same run."""

    task: str
    model_dir: str = "runs"
    backbone: str | None = None  # None: the model dir's backbone, else embedded (built-in) / resnet34
    backbone_weights: str | None = None
    random_init: bool = False
    data_dir: str = "data"
    download: bool = True
    seed: int = 0
    method: str = "nettailor"
    config: NetTailorConfig = field(default_factory=NetTailorConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def to_json(self) -> dict:
        d = asdict(self)
        d["config"], d["transfer"] = self.config.to_json(), self.transfer.to_json()
        return d

    @classmethod
    def from_json(cls, data: dict) -> TrainRequest:
        transfer = TransferConfig.from_json(data["transfer"]) if "transfer" in data else TransferConfig()
        return cls(**{**data, "config": NetTailorConfig.from_json(data["config"]), "transfer": transfer})


def default_config(task: str) -> NetTailorConfig:
    """Short schedules for the built-in generated tasks, the paper's for real data."""
    return NetTailorConfig.quick() if task in BUILTIN_TASKS else NetTailorConfig()


def default_transfer_config(task: str) -> TransferConfig:
    return TransferConfig.quick() if task in BUILTIN_TASKS else TransferConfig()


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"unknown device {name!r}; use cpu or cuda")
    return torch.device(name)


def _uses_model_dir_backbone(req: TrainRequest, mdir: ModelDir) -> bool:
    return req.backbone is None and req.backbone_weights is None and mdir.has_backbone()


def _backbone_name(req: TrainRequest) -> str:
    return req.backbone or ("embedded" if req.task in BUILTIN_TASKS else "resnet34")


def _spec_for(req: TrainRequest, mdir: ModelDir) -> BackboneSpec:
    """The architecture (and so the preprocessing) without loading or downloading any weights."""
    if _uses_model_dir_backbone(req, mdir):
        return BackboneSpec.from_json(mdir.backbone_meta()["spec"])
    return get_spec(_backbone_name(req))


def _backbone_for(req: TrainRequest, mdir: ModelDir) -> tuple[UniversalBackbone, str]:
    """The backbone to train on, written into the model dir (once) and its sha256."""
    if _uses_model_dir_backbone(req, mdir):
        backbone, meta = mdir.load_backbone()
        return backbone, meta["sha256"]
    backbone, source = build_backbone(_backbone_name(req), weights=req.backbone_weights,
                                      pretrained=not req.random_init)
    sha = mdir.write_backbone(backbone, source)
    return backbone, sha


def train_task(req: TrainRequest, *, device: torch.device, resume: bool = False,
               progress: Progress | None = None) -> Path:
    """Train ``req.task`` with ``req.method`` and write its pack (named after the task, or ``<task>--<method>`` for
    any method but nettailor, so that several methods of one task live side by side); returns the pack's folder."""
    mdir = ModelDir(req.model_dir)
    name = method_pack_name(req.task, req.method)
    work = mdir.work_dir(name)
    saved = work / "request.json"
    if resume and saved.is_file():
        req = TrainRequest.from_json(read_json(saved))
    elif work.exists():
        shutil.rmtree(work)
    torch.manual_seed(req.seed)
    spec = _spec_for(req, mdir)
    check_method(req.method, spec.num_units)  # before any data or weights are fetched
    preprocess = Preprocess(spec.input_size, spec.mean, spec.std)
    data = load_task(req.task, data_dir=Path(req.data_dir), preprocess=preprocess, download=req.download,
                     seed=req.seed)  # data first: a missing dataset fails before any weights are fetched
    if len(data.classes) < 2:
        raise ConfigError(f"task {req.task!r} has {len(data.classes)} class; at least 2 are needed")
    backbone, sha = _backbone_for(req, mdir)
    backbone.to(device).eval()
    work.mkdir(parents=True, exist_ok=True)
    write_json(saved, req.to_json())
    t0 = time.perf_counter()
    trainer = Trainer(device=device, work_dir=work, progress=progress, seed=req.seed)
    meta = {"method": req.method, "backbone": spec.name, "backbone_sha256": sha, "classes": data.classes,
            "preprocess": preprocess.to_json(), "data": {**data.summary(), "spec": req.task}}
    if req.method == "nettailor":
        result = train_nettailor(req.config, backbone, data, trainer)
        tensors = result.student.task_state()
        meta.update({"architecture": result.student.architecture(), "config": req.config.to_json(),
                     "metrics": result.metrics, "training": {"phases": result.phases}})
    else:
        tuned = train_transfer(req.method, req.transfer, backbone, data, trainer)
        tensors = tuned.net.task_state()
        meta.update({"tune": tuned.net.spec.to_json(), "config": req.transfer.to_json(), "metrics": tuned.metrics,
                     "training": {"phases": tuned.phases}})
        if tuned.selection is not None:
            meta["selection"] = tuned.selection
        if tuned.attention is not None:
            meta["attention"] = tuned.attention
    meta["training"]["seconds"] = round(time.perf_counter() - t0, 2)
    meta.update({"versions": versions(), "machine": machine(),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return mdir.write_task(name, tensors, meta)


def method_pack_name(task: str, method: str) -> str:
    """The pack of ``task`` trained with ``method``: ``svhn`` for nettailor, ``svhn--finetune-last-2`` otherwise."""
    return pack_name(task) if method == "nettailor" else f"{pack_name(task)}--{method.replace(':', '-')}"


def evaluate_task(model_dir: str | Path, task: str, *, data_dir: str | Path = "data", split: str = "test",
                  device: torch.device = torch.device("cpu"), download: bool = True) -> dict:
    """Re-measure a saved pack's accuracy on a split of its dataset."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, not {split!r}")
    mdir = ModelDir(model_dir)
    backbone, bmeta = mdir.load_backbone()
    student, meta = mdir.load_model(task, backbone, bmeta["sha256"])
    spec = meta["data"]["spec"]
    data = load_task(spec, data_dir=Path(data_dir), preprocess=preprocess_of(meta), download=download)
    acc = accuracy(student.to(device), getattr(data, split), device)
    return {"task": task, "split": split, "accuracy": round(acc, 3),
            "recorded_accuracy": meta["metrics"]["accuracy"], "images": len(getattr(data, split))}
