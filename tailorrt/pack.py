"""The model directory: one shared backbone, one pack per task.

```
<model-dir>/backbone/backbone.safetensors + backbone.json
<model-dir>/tasks/<task>/task.safetensors + task.json
```
Every file is written atomically; a task pack is assembled in ``<model-dir>/.work`` and renamed
into ``tasks/`` whole, so ``tasks/`` never holds a half-written pack.
"""

from __future__ import annotations

from pathlib import Path

from tailorrt.errors import BackboneMismatchError, PackError
from tailorrt.files import recover_swaps
from tailorrt.integrity import FileVerifier
from tailorrt.record_fields import TASK_NAME
from tailorrt.records import (
    REMEDY,
    BackboneRecord,
    ExportRecord,
    FileRef,
    TaskRecord,
    read_record,
)

BACKBONE_FILE = "backbone.safetensors"
TASK_FILE = "task.safetensors"


def check_task_name(name: str) -> str:
    if not TASK_NAME.match(name):
        raise PackError(f"invalid task name {name!r}: it must match [a-z0-9][a-z0-9_-]{{0,63}}")
    return name


class ModelDir:
    """Reads one model directory, with no torch. Every file it hands out was checked against its recorded sha256
    (each file hashed once per identity, see :class:`~tailorrt.integrity.FileVerifier`). Writing packs and building
    networks is the training side's :class:`~tailorrt.training.packs.TrainingDir`."""

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
        """The ``export.json`` of an export folder, checked and typed (None when there is none)."""
        path = self.export_dir(kind) / "export.json"
        return read_record(path, ExportRecord) if path.is_file() else None

    def export_file(self, kind: str, entry: FileRef) -> Path:
        """A file named by an export record, checked against the sha256 recorded for it."""
        return self.files.verify(self.export_dir(kind) / entry.name, entry.sha256,
                                 recorded_in=self.export_dir(kind) / "export.json", remedy=REMEDY["export"])

    @property
    def check_cache(self) -> Path:
        """Where the image-file checks of this model dir's datasets are remembered
        (:mod:`tailorrt.training.image_check`)."""
        return self.root / ".cache" / "image-check.json"

    def work_dir(self, task: str) -> Path:
        return self.root / ".work" / check_task_name(task)

    # ------------------------------------------------------------------ backbone

    def has_backbone(self) -> bool:
        return (self.backbone_dir / "backbone.json").is_file()

    def backbone_record(self) -> BackboneRecord:
        """The backbone's record, checked and typed (:class:`~tailorrt.records.BackboneRecord`)."""
        path = self.backbone_dir / "backbone.json"
        if not path.is_file():
            raise PackError(f"no backbone in {self.root} (expected {path}); train a task into it first")
        return read_record(path, BackboneRecord)

    # ------------------------------------------------------------------ tasks

    def task_names(self) -> list[str]:
        if not self.tasks_dir.is_dir():
            return []
        return sorted(p.name for p in self.tasks_dir.iterdir() if (p / "task.json").is_file())

    def task_record(self, name: str) -> TaskRecord:
        """A task's record, checked and typed (:class:`~tailorrt.records.TaskRecord`)."""
        path = self.tasks_dir / check_task_name(name) / "task.json"
        if not path.is_file():
            have = ", ".join(self.task_names()) or "none"
            raise PackError(f"no task {name!r} in {self.root} (tasks: {have})")
        return read_record(path, TaskRecord)

    def task_record_for(self, name: str, backbone_sha256: str) -> TaskRecord:
        """A task's record, refusing a task trained on another backbone than ``backbone_sha256``."""
        rec = self.task_record(name)
        if rec.backbone_sha256 != backbone_sha256:
            raise BackboneMismatchError(
                f"task {name!r} was trained on backbone sha256 {rec.backbone_sha256[:12]}, but the "
                f"loaded backbone is {backbone_sha256[:12]}; retrain the task on this backbone")
        return rec
