"""Training a task into a model directory, re-evaluating a saved pack, and summarising a model dir."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tailorrt.backbone_spec import BackboneSpec
from tailorrt.errors import ConfigError, PackError, TrainingError
from tailorrt.files import read_json, write_json
from tailorrt.records import AutoChoice, Budget, Metrics, TaskDraft
from tailorrt.training import auto, methods
from tailorrt.training.backbones import UniversalBackbone, build_backbone, get_spec
from tailorrt.training.datasets import DataCheck, Preprocess, TaskData, load_task, pack_name
from tailorrt.training.distributed import Cluster
from tailorrt.training.image_check import listed
from tailorrt.training.methods import Trained
from tailorrt.training.packs import TrainingDir, machine, versions
from tailorrt.training.phases import Progress, Trainer, accuracy
from tailorrt.training.world import BUILTIN_TASKS


@dataclass
class TrainRequest:
    """Everything ``tailor train`` needs; saved in the work dir so ``--resume`` continues the same run."""

    task: str
    model_dir: str = "runs"
    backbone: str | None = None  # None: the model dir's backbone, else embedded (built-in) / resnet34
    backbone_weights: str | None = None
    input_size: int | None = None  # the backbone's input size in pixels (None: its spec's; fixed per model dir)
    random_init: bool = False
    data_dir: str = "data"
    download: bool = True
    seed: int = 0
    method: str = methods.DEFAULT
    options: dict[str, Any] = field(default_factory=dict)  # the method's options by flag (see methods.options())
    batch_size: int | None = None  # every phase's, when given
    budget: Budget = field(default_factory=Budget)  # --method auto: what the chosen method must meet
    auto_candidates: list[str] | None = None  # --method auto: the methods tried (None: the registry's candidates)
    saved_config: dict | None = None  # the method's config as the run started (what --resume continues)
    strict: bool = False  # refuse a dataset with unreadable image files or empty classes (else left out, reported)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainRequest:
        """A saved request; one saved before methods had options of their own (its ``config`` and ``transfer``, one
        for NetTailor, one for the other methods) continues with the config it saved."""
        data = dict(data)
        if "config" in data:
            nettailor, others = data.pop("config"), data.pop("transfer", None)
            default = methods.get(data.get("method", methods.DEFAULT)) is methods.get(methods.DEFAULT)
            data["saved_config"] = nettailor if default else others
        try:
            return cls(**{**data, "budget": Budget(**data.get("budget", {}))})
        except TypeError as e:
            raise ConfigError(f"the saved run was started by another version of tailorrt ({e}); start it again "
                              "without --resume") from e

    @property
    def builtin(self) -> bool:
        """A built-in generated task (short schedules) rather than real data (the papers' schedules)."""
        return self.task in BUILTIN_TASKS

    @property
    def auto(self) -> bool:
        """Whether the method is to be chosen (``--method auto``)."""
        return self.method == auto.NAME

    def candidates(self, backbone: BackboneSpec | None = None) -> list[str]:
        """The methods ``auto`` tries: those given, else the defaults that run on ``backbone``'s blocks."""
        return self.auto_candidates or auto.default_candidates(backbone.block if backbone else None)

    def check(self, backbone: BackboneSpec | None = None) -> None:
        """Raise ConfigError for an unknown method or candidate, or an option it does not take (and, given the
        ``backbone``, a method that does not run on its blocks or options that do not fit its units): before
        anything is loaded."""
        for name in self.candidates(backbone) if self.auto else [self.method]:
            self.config(methods.get(name, backbone))

    def config(self, method: methods.Method) -> Any:
        """``method``'s config for this run: its defaults for the task, with the options given (with ``auto``, those
        of the options that the method has); a resumed run's, as it started."""
        if self.saved_config is not None and not self.auto and method.accepts(self.method):
            return method.config_from_json(self.saved_config)
        return methods.configure(method, self.builtin, self.options, self.batch_size, strict=not self.auto)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"unknown device {name!r}; use cpu or cuda")
    return torch.device(name)


def _uses_model_dir_backbone(req: TrainRequest, mdir: TrainingDir) -> bool:
    return req.backbone is None and req.backbone_weights is None and mdir.has_backbone()


def _backbone_name(req: TrainRequest) -> str:
    return req.backbone or ("embedded" if req.task in BUILTIN_TASKS else "resnet34")


def _spec_for(req: TrainRequest, mdir: TrainingDir) -> BackboneSpec:
    """The architecture (and so the preprocessing) without loading or downloading any weights; ConfigError where
    ``--input-size`` asks the model dir's backbone for another size than the one its tasks were trained at."""
    if _uses_model_dir_backbone(req, mdir):
        spec = mdir.backbone_record().spec
        if req.input_size not in (None, spec.input_size):
            raise ConfigError(f"the backbone of {mdir.root} runs at {spec.input_size} px; every task of a model dir "
                              f"shares it: use another --model-dir for {req.input_size} px")
        return spec
    return get_spec(_backbone_name(req), input_size=req.input_size)


def _backbone_for(req: TrainRequest, mdir: TrainingDir) -> tuple[UniversalBackbone, str]:
    """The backbone to train on, written into the model dir (once) and its sha256."""
    if _uses_model_dir_backbone(req, mdir):
        backbone, rec = mdir.load_backbone()
        return backbone, rec.sha256
    backbone, source = build_backbone(_backbone_name(req), weights=req.backbone_weights,
                                      pretrained=not req.random_init, input_size=req.input_size)
    sha = mdir.write_backbone(backbone, source)
    return backbone, sha


def train_task(req: TrainRequest, *, device: torch.device, resume: bool = False,
               progress: Progress | None = None, report: Callable[[str], None] = lambda _m: None,
               cluster: Cluster = Cluster()) -> Path:
    """Train ``req.task`` with ``req.method`` (or choose one, for ``auto``) and write its pack (named by
    :func:`tailorrt.training.methods.pack_name`, so that several methods of one task live side by side; ``auto``'s is
    named after the task); returns the pack's folder. Under torchrun (``cluster``) every process trains and rank 0
    alone writes."""
    mdir = TrainingDir(req.model_dir)
    name = pack_name(req.task) if req.auto else methods.pack_name(pack_name(req.task), req.method)
    work = mdir.work_dir(name)
    saved = work / "request.json"
    if resume and saved.is_file():
        req = TrainRequest.from_json(read_json(saved))
    with cluster.main_first():
        if not (resume and saved.is_file()) and work.exists() and cluster.main:
            shutil.rmtree(work)
    torch.manual_seed(req.seed)
    spec = _spec_for(req, mdir)
    req.check(spec)  # before any data or weights are fetched
    preprocess = Preprocess(spec.input_size, spec.mean, spec.std)
    with cluster.main_first():  # rank 0 downloads (and writes the backbone); the others then read them
        check = DataCheck(strict=req.strict, cache=mdir.check_cache, progress=progress if cluster.main else None,
                          report=report if cluster.main else lambda _line: None)
        data = load_task(req.task, data_dir=Path(req.data_dir), preprocess=preprocess, download=req.download,
                         seed=req.seed, check=check)  # data first: a missing dataset fails before any weights
        if len(data.classes) < 2:
            raise ConfigError(f"task {req.task!r} has {len(data.classes)} class; at least 2 are needed")
        if cluster.main:
            backbone, sha = _backbone_for(req, mdir)
    if not cluster.main:  # the backbone rank 0 has just written or checked
        backbone, bmeta = mdir.load_backbone()
        sha = bmeta.sha256
    backbone.to(device).eval()
    frozen = fingerprint(backbone)
    if not req.auto:
        req.saved_config = req.config(methods.get(req.method)).to_json()
    if cluster.main:
        work.mkdir(parents=True, exist_ok=True)
        write_json(saved, req.to_json())

    def run(method_name: str, cfg: Any, folder: Path) -> Trained:
        trainer = Trainer(device=device, work_dir=folder, progress=progress, seed=req.seed, cluster=cluster)
        return methods.get(method_name).train(method_name, cfg, backbone, data, trainer)

    choice: AutoChoice | None = None  # tailorrt.training.auto's record of how it chose
    method_name = req.method
    if req.auto:
        def short(candidate: str) -> tuple[Trained, float]:
            cfg = methods.shorter(req.config(methods.get(candidate)), auto.SHORT)
            trained = run(candidate, cfg, work / "auto" / candidate.replace(":", "-"))
            return trained, accuracy(trained.net, data.val, device)

        choice = auto.choose(req.candidates(spec), req.budget, short, report)
        method_name = choice.winner
        report(f"auto: {method_name} wins ({choice.reason}); training it on the full schedule")
    t0 = time.perf_counter()
    trained = run(method_name, req.config(methods.get(method_name)), work)
    seconds = round(time.perf_counter() - t0, 2)
    if choice is not None:
        choice = replace(choice, final_seconds=seconds)
    _report_decode_failures(data, report)
    if fingerprint(backbone) != frozen:  # the pack is recorded against these weights: they must not have moved
        raise TrainingError("the frozen backbone's weights or batch-norm statistics changed during training; "
                            "the pack was not written")
    draft = TaskDraft(method_name, sha, tuple(data.classes), preprocess, req.task, Metrics.from_json(trained.metrics),
                      choice,
                      {"backbone": spec.name, "data": data.summary(), **trained.record,
                       "training": {"phases": trained.phases, "seconds": seconds}, "versions": versions(),
                       "machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       **({"distributed": {"processes": cluster.world_size}} if cluster.distributed else {})})
    if not cluster.main:
        cluster.barrier()  # until rank 0 has written the pack
        return mdir.tasks_dir / name
    path = mdir.write_task(name, trained.net.task_state(), draft)
    cluster.barrier()
    return path


def _report_decode_failures(data: TaskData, report: Callable[[str], None]) -> None:
    """Files that checked fine but did not decode during training (changed under the run): said, and recorded."""
    failed = data.decode_failures()
    if failed and data.files is not None:
        data.files.failed_in_training = failed
        report(f"{len(failed)} image files did not decode during training and were replaced by the next image: "
               f"{listed(failed)}; the list is in task.json")


def fingerprint(module: torch.nn.Module) -> str:
    """A digest of every parameter and buffer of ``module`` (the frozen backbone's, checked before its pack is
    written)."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def evaluate_task(model_dir: str | Path, task: str, *, data_dir: str | Path = "data", split: str = "test",
                  device: torch.device = torch.device("cpu"), download: bool = True,
                  report: Callable[[str], None] = lambda _line: None) -> dict:
    """Re-measure a saved pack's accuracy on a split of its dataset."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, not {split!r}")
    mdir = TrainingDir(model_dir)
    backbone, bmeta = mdir.load_backbone()
    student, rec = mdir.load_model(task, backbone, bmeta.sha256)
    if rec.data_spec is None:
        raise PackError(f"task {task!r} does not record the data it was trained on; it cannot be evaluated again")
    data = load_task(rec.data_spec, data_dir=Path(data_dir), preprocess=rec.preprocess, download=download,
                     check=DataCheck(cache=mdir.check_cache, report=report))
    acc = accuracy(student.to(device), getattr(data, split), device)
    skipped = [] if data.files is None else [asdict(s) for s in data.files.skipped]
    return {"task": task, "split": split, "accuracy": round(acc, 3),
            "recorded_accuracy": rec.metrics.accuracy if rec.metrics else None, "images": len(getattr(data, split)),
            "skipped_files": skipped}
