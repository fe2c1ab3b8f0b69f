"""What both halves of ``tailor export`` (ONNX and TensorRT) use: the request, the tasks being exported,
the staging folders, carrying over the previous export's tasks, and the side-by-side timing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from tailorrt import kinds
from tailorrt.errors import ConfigError, ExportError, PackError
from tailorrt.export import speed
from tailorrt.files import replace_dir, sha256_file, staging_dir
from tailorrt.kinds import ExportKind
from tailorrt.kinds.onnx import FUSE_BUDGET
from tailorrt.pack import ModelDir
from tailorrt.record_fields import Invalid
from tailorrt.records import ExportRecord, TaskRecord, write_record
from tailorrt.training.datasets import TaskData
from tailorrt.training.onnx_graph import INPUT, LOGITS

MANIFEST = "export.json"
TIMING_CACHE = "timing.cache"
FP32_TOLERANCE = 1e-4  # |logit difference| against PyTorch per logit scale (parity.allowed)
TRT_TOLERANCE = {False: 1e-3, True: 0.1}  # |logit difference| against ONNX Runtime per logit scale, fp32 / fp16
TRT_MIN_AGREEMENT = {False: 0.999, True: 0.98}
Report = Callable[[str], None]
# each export kind's step, by the kind's folder: a function of an ExportContext that returns its manifest, registered
# by :func:`export_step` in the module that writes that kind
STEPS: dict[str, Callable[[Any], ExportRecord]] = {}
Step = Callable[[Any], ExportRecord]


def export_step(kind: ExportKind) -> Callable[[Step], Step]:
    """Register the decorated function as the step that writes ``kind`` (:mod:`tailorrt.kinds`)."""

    def register(step: Step) -> Step:
        STEPS[kind.folder] = step
        return step

    return register


@dataclass
class ExportRequest:
    """What ``tailor export`` does."""

    model_dir: str = "runs"
    tasks: list[str] | None = None  # None: every task in the model dir
    trt: bool = False
    fp16: bool = False
    max_batch: int = 32
    data_dir: str = "data"
    download: bool = True
    parity_images: int = 256
    tolerance: float = FP32_TOLERANCE
    bench: bool = False
    precision: str = "fp32"  # also write a bf16 check or int8 graphs (tailorrt.precision)
    max_precision_drop: float = 0.5  # points of test accuracy a low precision may lose against fp32
    calibration_images: int = 512  # training images that set the int8 activation ranges
    check_images: int = 2000  # test images of the accuracy check (all when fewer)
    fuse_budget: float = FUSE_BUDGET  # of the shared weights' bytes, what a task graph may copy to fold batch norms

    def validate(self) -> None:
        if self.fp16 and not self.trt:
            raise ConfigError("--fp16 applies to TensorRT engines; add --trt")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1, not {self.max_batch}")
        if self.parity_images < 1:
            raise ConfigError(f"--parity-images must be at least 1, not {self.parity_images}")
        kinds.for_precision(self.precision)  # an unknown one: a ConfigError naming the choices
        if not 0 <= self.max_precision_drop <= 100:
            raise ConfigError(f"--max-precision-drop is in points of accuracy, 0 to 100, not {self.max_precision_drop}")
        if self.calibration_images < 1 or self.check_images < 1:
            raise ConfigError("--calibration-images and --check-images must be at least 1")
        if not 0 <= self.fuse_budget <= 1:
            raise ConfigError(f"--fuse-budget is a fraction of the shared weights, 0 to 1, not {self.fuse_budget}")


@dataclass
class TaskNetwork:
    """A task ready to export: its PyTorch module, metadata, parity images and data (loaded once, for the
    low-precision calibration and accuracy check)."""

    name: str
    record: TaskRecord
    module: nn.Module
    images: np.ndarray
    data: TaskData

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self.record.preprocess.size
        return (3, size, size)


def export_staging(mdir: ModelDir, kind: str) -> Path:
    """Where ``onnx/`` or ``trt/`` is assembled; the pid in the name lets a later export remove it if killed."""
    return staging_dir(mdir.root / ".work", f"export-{kind.replace('-', '_')}-{os.getpid()}-")


def previous_export(mdir: ModelDir, kind: str, report: Report) -> ExportRecord | None:
    """The record of the export being replaced; one that cannot be read is reported and nothing is carried over."""
    try:
        return mdir.export_record(kind)
    except PackError as e:
        report(f"the previous {kind} export is not used: {e}")
        return None


def carry_over(prev: ExportRecord | None, folder: Path, tmp: Path, skip: set[str],
               same: Callable[[ExportRecord], bool], report: Report) -> dict[str, dict]:
    """Copy the previous export's entries (and files) for tasks not being re-exported."""
    if prev is None:
        return {}
    kept = {}
    for name, task in prev.tasks.items():
        if name in skip:
            continue
        entry = task.written
        files = entry_files(entry)
        if not same(prev) or not all((folder / f).is_file() and sha256_file(folder / f) == sha for f, sha in files):
            report(f"dropped {name} from the previous export (out of date or damaged); re-export it")
            continue
        for f, _ in files:
            shutil.copy2(folder / f, tmp / f)
        kept[name] = entry
    return kept


def write_manifest(path: Path, data: dict) -> ExportRecord:
    """Write an export's record after reading it back as an :class:`ExportRecord` (its kind's checks included), so
    that an export cannot write what the runtime would refuse; returns the typed record."""
    try:
        record = ExportRecord.from_json(data)
    except Invalid as e:
        raise ExportError(f"the {data.get('kind')} export's record would not be valid ({e}); nothing was written"
                          ) from None
    write_record(path, data)
    return record


def same_shared(prev: ExportRecord, facts: dict) -> bool:
    """Whether the previous export's tasks read the shared file this export writes (its sha256 in ``facts``)."""
    return prev.shared is not None and prev.shared.sha256 == facts["sha256"]


def assemble_export(mdir: ModelDir, kind: str, networks: list[TaskNetwork], report: Report, *,
                    prepare: Callable[[Path], dict], same: Callable[[ExportRecord, dict], bool],
                    export_task: Callable[[Path, TaskNetwork], dict], manifest: Callable[[dict, dict], dict]
                    ) -> ExportRecord:
    """Assemble ``<model-dir>/<kind>/`` in a staging folder and swap it in whole (the previous export stays as it
    was if anything fails). ``prepare(tmp)`` writes what every task reads and returns facts about it; the previous
    export's other tasks are carried over when ``same(previous manifest, facts)``; ``export_task(tmp, net)``
    writes a task and returns its entry; ``manifest(tasks, facts)`` is the record written."""
    folder, tmp = mdir.export_dir(kind), export_staging(mdir, kind)
    try:
        facts = prepare(tmp)
        prev = previous_export(mdir, kind, report)
        tasks = carry_over(prev, folder, tmp, {n.name for n in networks}, lambda p: same(p, facts), report)
        for net in networks:
            tasks[net.name] = export_task(tmp, net)
        record = write_manifest(tmp / MANIFEST, manifest(dict(sorted(tasks.items())), facts))
        replace_dir(tmp, folder)
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def entry_files(entry: dict) -> list[tuple[str, str]]:
    """(file, sha256) of every file an export manifest's task entry names (none for a check-only entry)."""
    return [(e["file"], e["sha256"]) for e in (entry, entry.get("check", {})) if "file" in e]


@torch.inference_mode()
def torch_logits(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return module(torch.from_numpy(x)).numpy()


def bench_task(net: TaskNetwork, session: ort.InferenceSession, batches: tuple[int, ...] = (1, 32),
               extra: dict[str, Callable[[np.ndarray], object]] | None = None) -> dict:
    """Images/s of PyTorch eager and ONNX Runtime (and ``extra`` runners) on the same images, side by side."""
    out = {"threads": {"torch": torch.get_num_threads(),
                       "onnxruntime": session.get_session_options().intra_op_num_threads}}
    for b in batches:
        x = np.resize(net.images, (b, *net.images.shape[1:])).astype(np.float32)
        xt = torch.from_numpy(x)

        def eager() -> object:
            with torch.inference_mode():
                return net.module(xt)

        fns = {"pytorch": eager, "onnxruntime": lambda: session.run([LOGITS], {INPUT: x})}
        for name, fn in (extra or {}).items():
            fns[name] = lambda fn=fn: fn(x)
        res = speed.time_side_by_side(fns, batch=b)
        res["onnxruntime_vs_pytorch"] = speed.paired_ratio(res, "onnxruntime", "pytorch")["median"]
        out[f"batch_{b}"] = res
    return out
