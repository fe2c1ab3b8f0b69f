"""The model directory's metadata records: ``backbone.json``, ``tasks/<task>/task.json`` and ``onnx|trt/export.json``.

One reader and one writer for all of them. A record is sealed with the sha256 of its content when written
(:mod:`tailorrt.integrity`) and, when read, checked in one step: valid JSON, its seal, its format version,
and the fields the runtime, export and eval rely on (types, sha256 strings, plain file names). A bad or old
record is one :class:`~tailorrt.errors.PackError` naming the file and saying what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailorrt.backbone_spec import BackboneSpec
from tailorrt.errors import CheckpointError, PackError
from tailorrt.files import read_json, write_json
from tailorrt.integrity import seal, unseal
from tailorrt.preprocess import Preprocess
from tailorrt.record_fields import Invalid, field_of, is_number, sha
from tailorrt.version import __version__

FORMAT_VERSION = 1

REMEDY = {
    "backbone": "restore it from a copy; every task pack of this model directory was trained on it",
    "task": "restore the pack from a copy or train the task again (tailor train --task ...)",
    "export": "run tailor export again (add --trt for engines)",
}


def write_record(path: Path, data: dict) -> None:
    """Write a metadata record atomically, sealed with the sha256 of its content."""
    write_json(path, seal(data))


def read_record(path: Path, kind: str) -> dict:
    """Read and check a ``backbone``, ``task`` or ``export`` record."""
    remedy = REMEDY[kind]
    try:
        raw = read_json(path)
    except CheckpointError as e:
        raise PackError(f"{e}; {remedy}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise PackError(f"{path} cannot be read ({e}); {remedy}") from e
    data = unseal(raw, path, remedy)
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise PackError(f"{path} has format_version {version!r}; this tailorrt {__version__} reads version "
                        f"{FORMAT_VERSION}; upgrade tailorrt or re-create the file")
    try:
        CHECKS[kind](data)
    except Invalid as e:
        raise PackError(f"{path} is not a valid {kind} record: {e}; {remedy}") from None
    return data


# ---------------------------------------------------------------------------------------------- field checks


def check_preprocess(pre: Any, where: str = "preprocess.") -> None:
    """The fields :class:`~tailorrt.training.datasets.Preprocess` is built from: a size, 3 means, 3 positive stds."""
    resize = field_of(pre, "resize", list, where)
    if not resize or not isinstance(resize[0], int) or isinstance(resize[0], bool) or not 1 <= resize[0] <= 4096:
        raise Invalid(f"'{where}resize' must start with a size in 1..4096, not {resize[:2]!r}")
    for key, positive in (("mean", False), ("std", True)):
        values = field_of(pre, key, list, where)
        if len(values) != 3 or not all(is_number(v, positive=positive) for v in values):
            raise Invalid(f"'{where}{key}' must hold 3 finite{' positive' if positive else ''} numbers")


@dataclass(frozen=True)
class Metrics:
    """What every method records of a trained task (``metrics`` of ``task.json``); a method's own figures (the
    NetTailor search, ...) stay in :attr:`TaskRecord.raw` for the method to read."""

    accuracy: float
    teacher_accuracy: float | None  # None: the method trained no teacher
    flops: int
    teacher_flops: int
    task_params: int
    shared_params_used: int
    universal_blocks_kept: int
    universal_blocks_total: int

    @classmethod
    def from_json(cls, data: Any, where: str = "metrics.") -> Metrics:
        number = (int, float)
        return cls(accuracy=field_of(data, "accuracy", number, where),
                   teacher_accuracy=field_of(data, "teacher_accuracy", (*number, type(None)), where),
                   **{k: field_of(data, k, int, where) for k in ("flops", "teacher_flops", "task_params",
                                                                 "shared_params_used", "universal_blocks_kept",
                                                                 "universal_blocks_total")})


@dataclass(frozen=True)
class FileRef:
    """A file a record names, with its sha256 and size."""

    name: str
    sha256: str
    bytes: int | None = None

    @classmethod
    def entry(cls, data: Any) -> FileRef:
        """A ``{"file", "sha256", "bytes"}`` entry of an export record (checked by its kind's record check)."""
        return cls(data["file"], data["sha256"], data.get("bytes"))


@dataclass(frozen=True)
class ExportEntry:
    """One task of an export record: its file (none for bf16), the pack it was exported from, and for int8 the
    stored check images; ``raw`` holds the kind's own figures (parity, speed, accuracy checks)."""

    file: FileRef | None
    pack_sha256: str | None
    check: FileRef | None
    accuracy_check: dict | None  # a low precision's test accuracy against fp32, as its export measured it
    raw: dict = field(compare=False, repr=False)


@dataclass(frozen=True)
class ExportRecord:
    """An ``export.json`` of any export kind (:mod:`tailorrt.kinds`), checked by that kind and parsed once."""

    kind: str  # the record kind (onnx, onnx-int8, bf16, tensorrt)
    backbone_sha256: str
    shared: FileRef | None  # the file every task graph reads
    tasks: dict[str, ExportEntry]
    max_batch: int | None  # engines: the largest batch of their optimisation profile
    cpu: str | None  # where an int8 export ran its checks
    raw: dict = field(compare=False, repr=False)

    @classmethod
    def from_json(cls, meta: dict) -> ExportRecord:
        from tailorrt import kinds

        check_export(meta)
        kind = kinds.by_record_kind(meta["kind"])
        tasks = {name: ExportEntry(FileRef.entry(e) if kind.task_files else None, e.get("pack_sha256"),
                                   FileRef.entry(e["check"]) if "check" in e else None, e.get("accuracy_check"),
                                   e)
                 for name, e in meta["tasks"].items()}
        shared = FileRef.entry(meta["shared"]) if "shared" in meta else None
        return cls(meta["kind"], kind.backbone_sha256(meta), shared, tasks, meta.get("max_batch"), meta.get("cpu"),
                   meta)

    @property
    def bytes(self) -> int:
        """Bytes of its files: the shared one and each task's."""
        files = [self.shared, *(e.file for e in self.tasks.values())]
        return sum(f.bytes or 0 for f in files if f is not None)


@dataclass(frozen=True)
class TaskRecord:
    """``tasks/<task>/task.json``, parsed and checked once: typed fields for what the runtime, export, eval and the
    tools read; ``raw`` is the whole record, for the method that wrote it (its own fields). ``data`` and
    ``metrics`` may be absent (a pack assembled by hand); where present, every field is checked."""

    task: str
    method: str
    backbone_sha256: str
    classes: tuple[str, ...]
    preprocess: Preprocess
    pack: FileRef
    data_spec: str | None  # the task spec it was trained from (built-in name, imagefolder:PATH, ...); None: not said
    metrics: Metrics | None  # None: a pack written without training figures (still served; tools show "-")
    auto: dict | None  # tailorrt.training.auto's record of how --method auto chose (None: the method was given)
    raw: dict = field(compare=False, repr=False)

    @classmethod
    def from_json(cls, meta: dict) -> TaskRecord:
        classes = field_of(meta, "classes", list)
        if not classes or not all(isinstance(c, str) for c in classes):
            raise Invalid("'classes' must be a non-empty list of class names")
        pre = field_of(meta, "preprocess", dict)
        check_preprocess(pre)
        files = field_of(meta, "files", dict)
        if len(files) != 1:
            raise Invalid("'files' must name exactly one weights file")
        (name, entry), = files.items()
        auto = meta.get("auto")
        return cls(task=field_of(meta, "task", str), method=field_of(meta, "method", str),
                   backbone_sha256=sha(meta, "backbone_sha256"), classes=tuple(classes),
                   preprocess=Preprocess.from_json(pre),
                   pack=FileRef(name, sha(entry, "sha256", f"files.{name}."),
                                field_of(entry, "bytes", int, f"files.{name}.")),
                   data_spec=field_of(field_of(meta, "data", dict), "spec", str, "data.") if "data" in meta else None,
                   metrics=Metrics.from_json(field_of(meta, "metrics", dict)) if "metrics" in meta else None,
                   auto=None if auto is None else _auto(auto),
                   raw=meta)


def _auto(record: Any) -> dict:
    """``auto`` of task.json, checked for what is read of it: its candidates, winner and reason."""
    field_of(record, "candidates", list, "auto.")
    field_of(record, "winner", str, "auto.")
    field_of(record, "reason", str, "auto.")
    return record


@dataclass(frozen=True)
class BackboneRecord:
    """``backbone/backbone.json``, parsed and checked once."""

    name: str
    sha256: str
    spec: BackboneSpec
    input_size: int
    bytes: int
    params: int
    raw: dict = field(compare=False, repr=False)

    @classmethod
    def from_json(cls, meta: dict) -> BackboneRecord:
        return cls(name=field_of(meta, "name", str), sha256=sha(meta, "sha256"),
                   spec=_spec(field_of(meta, "spec", dict)),
                   **{k: field_of(meta, k, int) for k in ("input_size", "bytes", "params")}, raw=meta)


def _spec(data: dict) -> BackboneSpec:
    """``spec`` of backbone.json, as the plain :class:`~tailorrt.backbone_spec.BackboneSpec` it was written from."""
    try:
        return BackboneSpec.from_json(data)
    except (KeyError, TypeError, ValueError) as e:
        raise Invalid(f"'spec' is not a backbone's spec this version can build ({type(e).__name__}: {e})") from e


def check_task(meta: dict) -> None:
    TaskRecord.from_json(meta)


def check_backbone(meta: dict) -> None:
    BackboneRecord.from_json(meta)


def check_export(meta: dict) -> None:
    from tailorrt import kinds

    record_kind = field_of(meta, "kind", str)
    kind = kinds.by_record_kind(record_kind)
    if kind is None:
        known = ", ".join(k.record_kind for k in kinds.kinds())
        raise Invalid(f"'kind' must be one of {known}, not {record_kind!r}")
    kind.check_record(meta)


CHECKS: dict[str, Callable[[dict], None]] = {"backbone": check_backbone, "task": check_task, "export": check_export}
