"""The model directory's torch half: writing the backbone and task packs, and building networks from them.

:class:`~tailorrt.pack.ModelDir` reads records and export files with no torch; :class:`TrainingDir` adds what
needs the training side (safetensors through torch, the backbone and the methods that rebuild a network).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from tailorrt.cpu import cpu_model, cpu_summary
from tailorrt.errors import BackboneMismatchError, PackError
from tailorrt.files import replace_dir, sha256_file, staging_dir
from tailorrt.pack import BACKBONE_FILE, TASK_FILE, ModelDir, check_task_name
from tailorrt.record_fields import Invalid
from tailorrt.records import FORMAT_VERSION, REMEDY, BackboneRecord, FileRef, TaskDraft, TaskRecord, write_record
from tailorrt.training import methods
from tailorrt.training.backbones import BackboneSource, UniversalBackbone, load_weights
from tailorrt.training.io import load_tensors, save_tensors
from tailorrt.version import __version__


def versions() -> dict:
    """The versions a record was made with."""
    return {"tailorrt": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def machine() -> dict:
    """Where a record was made: platform, CPU model and the instruction sets that decide speed, cores, threads."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu": cpu_summary(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


@dataclass
class TaskPack:
    """A loaded task pack: its metadata and its tensors."""

    name: str
    record: TaskRecord
    tensors: dict[str, torch.Tensor]
    path: Path


class TrainingDir(ModelDir):
    """A model directory that also writes packs and builds networks (the training side's half)."""

    @classmethod
    def of(cls, mdir: ModelDir) -> TrainingDir:
        """The same directory with the training side's methods, sharing its cache of checked files."""
        if isinstance(mdir, cls):
            return mdir
        out = cls(mdir.root)
        out.files = mdir.files
        return out

    def write_backbone(self, backbone: UniversalBackbone, source: BackboneSource) -> str:
        """Write the backbone once; an identical one already there is kept, a different one refused."""
        tmp_root = self.root / ".work"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
            candidate = Path(tmp) / BACKBONE_FILE
            save_tensors(candidate, backbone.state_dict(), {"format_version": str(FORMAT_VERSION)})
            sha = sha256_file(candidate)
            if self.has_backbone():
                have = self.backbone_record()
                if have.spec != backbone.spec:
                    raise BackboneMismatchError(
                        f"{self.root} already holds backbone {have.name!r} at {have.spec.input_size} px, "
                        f"not this {backbone.spec.name!r} at {backbone.spec.input_size} px (every task of a model dir "
                        "shares its backbone); use another --model-dir")
                if have.sha256 != sha:
                    raise BackboneMismatchError(
                        f"{self.root} already holds backbone {have.name!r} (sha256 {have.sha256[:12]}), not "
                        f"this {backbone.spec.name!r} (sha256 {sha[:12]}); use another --model-dir")
                return sha
            self.backbone_dir.mkdir(parents=True, exist_ok=True)
            os.replace(candidate, self.backbone_dir / BACKBONE_FILE)
        spec = backbone.spec
        size, params = (self.backbone_dir / BACKBONE_FILE).stat().st_size, sum(p.numel() for p in backbone.parameters())
        record = BackboneRecord(spec.name, sha, spec, spec.input_size, size, params,
                                {"source": {"kind": source.kind, "detail": source.detail}, "units": backbone.num_units,
                                 "normalize": {"mean": list(spec.mean), "std": list(spec.std)}, "versions": versions(),
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        write_record(self.backbone_dir / "backbone.json", record.to_json())
        return sha

    def load_backbone(self) -> tuple[UniversalBackbone, BackboneRecord]:
        """Rebuild the backbone from its JSON spec and weights, verifying the sha256 first."""
        rec = self.backbone_record()
        path = self.files.verify(self.backbone_dir / BACKBONE_FILE, rec.sha256,
                                 recorded_in=self.backbone_dir / "backbone.json", remedy=REMEDY["backbone"])
        try:
            model = UniversalBackbone(rec.spec)
        except (KeyError, TypeError, ValueError) as e:
            raise PackError(f"{self.backbone_dir / 'backbone.json'} holds an unusable spec ({type(e).__name__}: "
                            f"{e}); {REMEDY['backbone']}") from e
        load_weights(model, load_tensors(path), str(path))
        model.eval()
        return model, rec

    def write_task(self, name: str, tensors: dict[str, torch.Tensor], draft: TaskDraft) -> Path:
        """Assemble the pack in ``.work`` and rename it into ``tasks/`` in one step; a record that would not read
        back as a :class:`~tailorrt.records.TaskRecord` is refused before anything is written."""
        check_task_name(name)
        tmp = staging_dir(self.root / ".work", f"pack-{name}-")
        try:
            save_tensors(tmp / TASK_FILE, tensors, {"format_version": str(FORMAT_VERSION), "task": name})
            record = draft.to_json(name, FileRef(TASK_FILE, sha256_file(tmp / TASK_FILE),
                                                 (tmp / TASK_FILE).stat().st_size))
            try:
                TaskRecord.from_json(record)
            except Invalid as e:
                raise PackError(f"task {name!r}: its record would not be valid ({e}); nothing was written") from None
            write_record(tmp / "task.json", record)
            self.tasks_dir.mkdir(parents=True, exist_ok=True)
            final = self.tasks_dir / name
            replace_dir(tmp, final)
            return final
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def read_task(self, name: str, backbone_sha256: str) -> TaskPack:
        """Read a pack, refusing one trained on another backbone or whose weights do not match their sha256."""
        rec = self.task_record_for(name, backbone_sha256)
        folder = self.tasks_dir / name
        path = self.files.verify(folder / rec.pack.name, rec.pack.sha256, recorded_in=folder / "task.json",
                                 remedy=REMEDY["task"])
        return TaskPack(name, rec, load_tensors(path), folder)

    def load_model(self, name: str, backbone: UniversalBackbone,
                   backbone_sha256: str) -> tuple[nn.Module, TaskRecord]:
        """A ready-to-run network for a task of any method, sharing the backbone's weights."""
        pack = self.read_task(name, backbone_sha256)
        method = methods.for_record(pack.record)
        try:
            model = method.build(backbone, pack.record)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise PackError(f"{pack.path / 'task.json'} does not describe a network this version can build "
                            f"({type(e).__name__}: {e}); {REMEDY['task']}") from e
        model.load_task_state(pack.tensors)
        model.eval()
        return model, pack.record
