"""The model directory: one shared backbone, one pack per task.

```
<model-dir>/backbone/backbone.safetensors + backbone.json
<model-dir>/tasks/<task>/task.safetensors + task.json
```
Every file is written atomically; a task pack is assembled in ``<model-dir>/.work`` and renamed
into ``tasks/`` whole, so ``tasks/`` never holds a half-written pack.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tailorrt.backbone_spec import BackboneSpec
from tailorrt.errors import BackboneMismatchError, PackError
from tailorrt.fields import TASK_NAME
from tailorrt.files import recover_swaps, replace_dir, sha256_file, staging_dir
from tailorrt.integrity import FileVerifier
from tailorrt.precision import cpu_model, cpu_summary
from tailorrt.preprocess import Preprocess
from tailorrt.records import (
    FORMAT_VERSION,
    REMEDY,
    BackboneRecord,
    ExportRecord,
    FileRef,
    TaskRecord,
    read_record,
    write_record,
)
from tailorrt.version import __version__

if TYPE_CHECKING:  # the training side: torch is imported by the methods that build or save networks
    import torch
    from torch import nn

    from tailorrt.training.backbones import BackboneSource, UniversalBackbone

BACKBONE_FILE = "backbone.safetensors"
TASK_FILE = "task.safetensors"


def versions() -> dict:
    import torch
    import torchvision

    return {"tailorrt": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def machine() -> dict:
    """Where a record was made: platform, CPU model and the instruction sets that decide speed, cores, threads."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu": cpu_summary(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def check_task_name(name: str) -> str:
    if not TASK_NAME.match(name):
        raise PackError(f"invalid task name {name!r}: it must match [a-z0-9][a-z0-9_-]{{0,63}}")
    return name


@dataclass
class TaskPack:
    """A loaded task pack: its metadata and its tensors."""

    name: str
    meta: dict
    tensors: dict[str, torch.Tensor]
    path: Path


class ModelDir:
    """Reads and writes one model directory. Every file it hands out was checked against its recorded sha256
    (each file hashed once per identity, see :class:`~tailorrt.integrity.FileVerifier`). Reading records and
    export files needs no torch; the methods that build, load or save networks import the training side."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.files = FileVerifier()
        recover_swaps(self.root)
        recover_swaps(self.tasks_dir)

    @property
    def backbone_dir(self) -> Path:
        return self.root / "backbone"

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    def export_dir(self, kind: str) -> Path:
        """The folder of an export kind (:mod:`tailorrt.kinds`): the outputs of ``tailor export``."""
        from tailorrt import kinds

        return self.root / kinds.get(kind).folder

    def export_record(self, kind: str) -> ExportRecord | None:
        """The ``export.json`` of an export folder, typed (None when there is none)."""
        manifest = self.export_manifest(kind)
        return None if manifest is None else ExportRecord.from_json(manifest)

    def export_manifest(self, kind: str) -> dict | None:
        """The ``export.json`` of an export folder (checked), or None when there is none."""
        path = self.export_dir(kind) / "export.json"
        if not path.is_file():
            return None
        return read_record(path, "export")

    def export_file(self, kind: str, entry: FileRef) -> Path:
        """A file named by an export record, checked against the sha256 recorded for it."""
        return self.files.verify(self.export_dir(kind) / entry.name, entry.sha256,
                                 recorded_in=self.export_dir(kind) / "export.json", remedy=REMEDY["export"])

    @property
    def check_cache(self) -> Path:
        """Where the image-file checks of this model dir's datasets are remembered (:mod:`tailorrt.filecheck`)."""
        return self.root / ".cache" / "image-check.json"

    def work_dir(self, task: str) -> Path:
        return self.root / ".work" / check_task_name(task)

    # ------------------------------------------------------------------ backbone

    def has_backbone(self) -> bool:
        return (self.backbone_dir / "backbone.json").is_file()

    def backbone_meta(self) -> dict:
        path = self.backbone_dir / "backbone.json"
        if not path.is_file():
            raise PackError(f"no backbone in {self.root} (expected {path}); train a task into it first")
        return read_record(path, "backbone")

    def write_backbone(self, backbone: UniversalBackbone, source: BackboneSource) -> str:
        """Write the backbone once; an identical one already there is kept, a different one refused."""
        from tailorrt.training.io import save_tensors

        tmp_root = self.root / ".work"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
            candidate = Path(tmp) / BACKBONE_FILE
            save_tensors(candidate, backbone.state_dict(), {"format_version": str(FORMAT_VERSION)})
            sha = sha256_file(candidate)
            if self.has_backbone():
                have = self.backbone_meta()
                if BackboneSpec.from_json(have["spec"]) != backbone.spec:
                    raise BackboneMismatchError(
                        f"{self.root} already holds backbone {have['name']!r} at {have['spec']['input_size']} px, "
                        f"not this {backbone.spec.name!r} at {backbone.spec.input_size} px (every task of a model dir "
                        "shares its backbone); use another --model-dir")
                if have["sha256"] != sha:
                    raise BackboneMismatchError(
                        f"{self.root} already holds backbone {have['name']!r} (sha256 {have['sha256'][:12]}), not "
                        f"this {backbone.spec.name!r} (sha256 {sha[:12]}); use another --model-dir")
                return sha
            self.backbone_dir.mkdir(parents=True, exist_ok=True)
            os.replace(candidate, self.backbone_dir / BACKBONE_FILE)
        meta = {"format_version": FORMAT_VERSION, "name": backbone.spec.name, "spec": backbone.spec.to_json(),
                "sha256": sha, "source": {"kind": source.kind, "detail": source.detail},
                "units": backbone.num_units, "params": sum(p.numel() for p in backbone.parameters()),
                "input_size": backbone.spec.input_size,
                "normalize": {"mean": list(backbone.spec.mean), "std": list(backbone.spec.std)},
                "bytes": (self.backbone_dir / BACKBONE_FILE).stat().st_size, "versions": versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_record(self.backbone_dir / "backbone.json", meta)
        return sha

    def load_backbone(self) -> tuple[UniversalBackbone, dict]:
        """Rebuild the backbone from its JSON spec and weights, verifying the sha256 first."""
        from tailorrt.training.backbones import BackboneSpec, UniversalBackbone, load_weights
        from tailorrt.training.io import load_tensors

        rec = self.backbone_record()
        path = self.files.verify(self.backbone_dir / BACKBONE_FILE, rec.sha256,
                                 recorded_in=self.backbone_dir / "backbone.json", remedy=REMEDY["backbone"])
        try:
            model = UniversalBackbone(BackboneSpec.from_json(rec.spec))
        except (KeyError, TypeError, ValueError) as e:
            raise PackError(f"{self.backbone_dir / 'backbone.json'} holds an unusable spec ({type(e).__name__}: "
                            f"{e}); {REMEDY['backbone']}") from e
        load_weights(model, load_tensors(path), str(path))
        model.eval()
        return model, rec.raw

    # ------------------------------------------------------------------ tasks

    def task_names(self) -> list[str]:
        if not self.tasks_dir.is_dir():
            return []
        return sorted(p.name for p in self.tasks_dir.iterdir() if (p / "task.json").is_file())

    def write_task(self, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
        """Assemble the pack in ``.work`` and rename it into ``tasks/`` in one step."""
        from tailorrt.training.io import save_tensors

        check_task_name(name)
        tmp = staging_dir(self.root / ".work", f"pack-{name}-")
        try:
            save_tensors(tmp / TASK_FILE, tensors, {"format_version": str(FORMAT_VERSION), "task": name})
            meta = {**meta, "format_version": FORMAT_VERSION, "task": name,
                    "files": {TASK_FILE: {"sha256": sha256_file(tmp / TASK_FILE),
                                          "bytes": (tmp / TASK_FILE).stat().st_size}}}
            write_record(tmp / "task.json", meta)
            self.tasks_dir.mkdir(parents=True, exist_ok=True)
            final = self.tasks_dir / name
            replace_dir(tmp, final)
            return final
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def task_meta(self, name: str) -> dict:
        path = self.tasks_dir / check_task_name(name) / "task.json"
        if not path.is_file():
            have = ", ".join(self.task_names()) or "none"
            raise PackError(f"no task {name!r} in {self.root} (tasks: {have})")
        return read_record(path, "task")

    def task_record(self, name: str) -> TaskRecord:
        """A task's record, typed (:class:`~tailorrt.records.TaskRecord`)."""
        return TaskRecord.from_json(self.task_meta(name))

    def backbone_record(self) -> BackboneRecord:
        """The backbone's record, typed (:class:`~tailorrt.records.BackboneRecord`)."""
        return BackboneRecord.from_json(self.backbone_meta())

    def task_meta_for(self, name: str, backbone_sha256: str) -> dict:
        """A task's record, refusing a task trained on another backbone than ``backbone_sha256``."""
        meta = self.task_meta(name)
        trained_on = TaskRecord.from_json(meta).backbone_sha256
        if trained_on != backbone_sha256:
            raise BackboneMismatchError(
                f"task {name!r} was trained on backbone sha256 {trained_on[:12]}, but the "
                f"loaded backbone is {backbone_sha256[:12]}; retrain the task on this backbone")
        return meta

    def read_task(self, name: str, backbone_sha256: str) -> TaskPack:
        """Read a pack, refusing one trained on another backbone or whose weights do not match their sha256."""
        from tailorrt.training.io import load_tensors

        meta = self.task_meta_for(name, backbone_sha256)
        folder = self.tasks_dir / name
        path = self.files.verify(folder / TASK_FILE, pack_file(meta)["sha256"], recorded_in=folder / "task.json",
                                 remedy=REMEDY["task"])
        return TaskPack(name, meta, load_tensors(path), folder)

    def load_model(self, name: str, backbone: UniversalBackbone, backbone_sha256: str) -> tuple[nn.Module, dict]:
        """A ready-to-run network for a task of any method, sharing the backbone's weights."""
        from tailorrt.training import methods

        pack = self.read_task(name, backbone_sha256)
        meta = pack.meta
        method = methods.for_record(meta)
        try:
            model = method.build(backbone, meta)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise PackError(f"{pack.path / 'task.json'} does not describe a network this version can build "
                            f"({type(e).__name__}: {e}); {REMEDY['task']}") from e
        model.load_task_state(pack.tensors)
        model.eval()
        return model, meta


def pack_file(meta: dict) -> dict:
    """The ``sha256`` and ``bytes`` of a task's weights file, from its ``task.json``."""
    ref = TaskRecord.from_json(meta).pack
    return {"sha256": ref.sha256, "bytes": ref.bytes}


def preprocess_of(meta: dict) -> Preprocess:
    """A task's preprocessing, from its ``task.json``."""
    return Preprocess.from_json(TaskRecord.from_json(meta).preprocess)
