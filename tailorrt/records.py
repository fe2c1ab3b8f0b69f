"""The model directory's metadata records: ``backbone.json``, ``tasks/<task>/task.json`` and ``onnx|trt/export.json``.

One reader and one writer for all of them. A record is sealed with the sha256 of its content when written
(:mod:`tailorrt.integrity`) and, when read, checked in one step: valid JSON, its seal, its format version,
and the fields the runtime, export and eval rely on (types, sha256 strings, plain file names). A bad or old
record is one :class:`~tailorrt.errors.PackError` naming the file and saying what to do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from tailorrt.backbone_spec import BackboneSpec
from tailorrt.errors import CheckpointError, ConfigError, PackError
from tailorrt.files import read_json, write_json
from tailorrt.integrity import seal, unseal
from tailorrt.preprocess import Preprocess
from tailorrt.record_fields import FILE_NAME, Invalid, field_of, file_entry, is_number, sha
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


class Record(Protocol):
    KIND: ClassVar[str]  # backbone, task or export: its REMEDY

    @classmethod
    def from_json(cls, data: dict) -> Any: ...


R = TypeVar("R", bound=Record)


def read_record(path: Path, record: type[R]) -> R:
    """Read, check and parse a record: a :class:`BackboneRecord`, :class:`TaskRecord` or :class:`ExportRecord`."""
    kind = record.KIND
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
        return record.from_json(data)
    except Invalid as e:
        raise PackError(f"{path} is not a valid {kind} record: {e}; {remedy}") from None


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
    """What every method records of a trained task (``metrics`` of ``task.json``); ``extra`` holds a method's own
    figures (the NetTailor search, the units a tuning method owns, ...), which that method reads."""

    accuracy: float
    teacher_accuracy: float | None  # None: the method trained no teacher
    flops: int
    teacher_flops: int
    task_params: int
    shared_params_used: int
    universal_blocks_kept: int
    universal_blocks_total: int
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Any, where: str = "metrics.") -> Metrics:
        number = (int, float)
        counts = {k: field_of(data, k, int, where) for k in METRICS_FIELDS[2:]}  # after the two accuracies
        return cls(accuracy=field_of(data, "accuracy", number, where),
                   teacher_accuracy=field_of(data, "teacher_accuracy", (*number, type(None)), where), **counts,
                   extra={k: v for k, v in data.items() if k not in METRICS_FIELDS})

    def to_json(self) -> dict:
        return {**self.extra, **{k: getattr(self, k) for k in METRICS_FIELDS}}


METRICS_FIELDS = ("accuracy", "teacher_accuracy", "flops", "teacher_flops", "task_params", "shared_params_used",
                  "universal_blocks_kept", "universal_blocks_total")


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
class AccuracyCheck:
    """A low precision's accuracy against fp32 on the same images (``accuracy_check`` of an int8 or bf16 task), as
    its export measured it."""

    split: str  # test, or val where the task has no test split
    images: int
    fp32_accuracy: float  # percent
    accuracy: float  # percent, at the low precision
    drop_points: float  # fp32_accuracy - accuracy
    top1_agreement: float  # fraction of images whose top-1 class is fp32's
    max_abs_logit_diff: float
    max_abs_logit: float

    @classmethod
    def from_json(cls, data: Any, where: str = "accuracy_check.") -> AccuracyCheck:
        number = (int, float)
        return cls(field_of(data, "split", str, where), field_of(data, "images", int, where),
                   *(float(field_of(data, k, number, where)) for k in ACCURACY_FIGURES))

    def to_json(self) -> dict:
        return {"split": self.split, "images": self.images, **{k: getattr(self, k) for k in ACCURACY_FIGURES}}


ACCURACY_FIGURES = ("fp32_accuracy", "accuracy", "drop_points", "top1_agreement", "max_abs_logit_diff",
                    "max_abs_logit")


@dataclass(frozen=True)
class BatchSpeed:
    """Images/s of one batch size, every runner timed side by side (``speed.batch_<n>`` of an export's task,
    ``tailor export --bench``)."""

    batch: int
    images_per_s: dict[str, float]  # runner (pytorch, onnxruntime, tensorrt) -> its median images/s
    onnxruntime_vs_pytorch: float

    @classmethod
    def all_of(cls, entry: Any, where: str) -> tuple[BatchSpeed, ...]:
        """Every ``batch_<n>`` of an export task's ``speed`` object, smallest batch first."""
        out = []
        for key, res in field_of(entry, "speed", dict, where).items():
            if not key.startswith("batch_"):
                continue
            at = f"{where}speed.{key}."
            runners = {name: float(field_of(r, "images_per_s", (int, float), f"{at}{name}."))
                       for name, r in res.items() if isinstance(r, dict) and "images_per_s" in r}
            out.append(cls(int(key.removeprefix("batch_")), runners,
                           float(field_of(res, "onnxruntime_vs_pytorch", (int, float), at))))
        return tuple(sorted(out, key=lambda b: b.batch))


@dataclass(frozen=True)
class ExportEntry:
    """One task of an export record: its file (none for bf16), the pack it was exported from, for int8 the stored
    check images, a low precision's accuracy check and the timings ``--bench`` took; ``written`` is the entry as it
    was written, which a later export carries over unchanged."""

    file: FileRef | None
    pack_sha256: str | None
    check: FileRef | None
    accuracy_check: AccuracyCheck | None
    speed: tuple[BatchSpeed, ...]  # empty: not timed
    written: dict = field(compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict, task_files: bool, where: str) -> ExportEntry:
        check = data.get("accuracy_check")
        return cls(FileRef.entry(data) if task_files else None, data.get("pack_sha256"),
                   FileRef.entry(data["check"]) if "check" in data else None,
                   None if check is None else AccuracyCheck.from_json(check, f"{where}accuracy_check."),
                   BatchSpeed.all_of(data, where) if "speed" in data else (), data)


@dataclass(frozen=True)
class EngineSettings:
    """What a TensorRT export's engines were built with and for: a later export reuses an engine only where these
    are the same."""

    fp16: bool
    max_batch: int
    tensorrt: str
    gpu: str


@dataclass(frozen=True)
class ExportRecord:
    """An ``export.json`` of any export kind (:mod:`tailorrt.kinds`), checked by that kind and parsed once."""

    KIND: ClassVar[str] = "export"
    kind: str  # the record kind (onnx, onnx-int8, bf16, tensorrt)
    backbone_sha256: str
    shared: FileRef | None  # the file every task graph reads
    tasks: dict[str, ExportEntry]
    max_batch: int | None  # engines: the largest batch of their optimisation profile
    cpu: str | None  # where an int8 export ran its checks
    engines: EngineSettings | None  # TensorRT's build settings (None: not engines)
    timing_cache: FileRef | None  # TensorRT's timing cache, which a later build starts from
    raw: dict = field(compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> ExportRecord:
        from tailorrt import kinds

        check_export(data)
        kind = kinds.by_record_kind(data["kind"])
        tasks = {name: ExportEntry.from_json(e, kind.task_files, f"tasks.{name}.")
                 for name, e in data["tasks"].items()}
        shared = FileRef.entry(data["shared"]) if "shared" in data else None
        engines = None
        if data["kind"] == "tensorrt":
            engines = EngineSettings(data["fp16"], data["max_batch"], data["tensorrt"], data["gpu"])  # checked
        cache = data.get("timing_cache")
        if cache is not None:
            file_entry(cache, "timing_cache.")
        return cls(data["kind"], kind.backbone_sha256(data), shared, tasks, data.get("max_batch"), data.get("cpu"),
                   engines, None if cache is None else FileRef.entry(cache), data)

    @property
    def bytes(self) -> int:
        """Bytes of its files: the shared one and each task's."""
        files = [self.shared, *(e.file for e in self.tasks.values())]
        return sum(f.bytes or 0 for f in files if f is not None)


@dataclass(frozen=True)
class Budget:
    """What ``--method auto``'s choice must meet; None: no limit."""

    max_pack_mb: float | None = None
    max_mflops: float | None = None
    max_drop: float = 1.0  # points of validation accuracy below the best candidate

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not (is_number(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a non-negative number, not {value}")


@dataclass(frozen=True)
class AutoCandidate:
    """One method ``--method auto`` trained on its short schedule, with its figures, what of the budget it
    missed (nothing: it met it) and its own verdict where it gave one."""

    method: str
    val_accuracy: float
    test_accuracy: float
    pack_bytes: int
    flops: int
    seconds: float
    misses: tuple[str, ...] = ()
    shortfall: str | None = None  # the method found it falls short of what it was held to (NetTailor)
    caveat: str | None = None  # ... or could not tell whether it does

    @classmethod
    def from_json(cls, data: Any, where: str) -> AutoCandidate:
        number = (int, float)
        misses = field_of(data, "misses", list, where)
        return cls(field_of(data, "method", str, where), field_of(data, "val_accuracy", number, where),
                   field_of(data, "test_accuracy", number, where), field_of(data, "pack_bytes", int, where),
                   field_of(data, "flops", int, where), field_of(data, "seconds", number, where),
                   tuple(str(m) for m in misses), data.get("shortfall"), data.get("caveat"))

    def to_json(self) -> dict:
        return {k: list(v) if k == "misses" else v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class AutoChoice:
    """``auto`` of task.json: how ``--method auto`` chose (:mod:`tailorrt.training.auto`): the budget, the
    candidates it trained, the winner, why, and the seconds it took."""

    candidates: tuple[AutoCandidate, ...]
    winner: str
    reason: str
    schedule_fraction: float  # of the full schedule, each candidate's
    search_seconds: float
    final_seconds: float = 0.0  # the winner's full training (0: not yet)
    budget: Budget = Budget()
    best_val_accuracy: float | None = None  # None: a record from before it was kept

    @property
    def total_seconds(self) -> float:
        return round(self.search_seconds + self.final_seconds, 2)

    @classmethod
    def from_json(cls, data: Any) -> AutoChoice:
        number = (int, float)
        candidates = field_of(data, "candidates", list, "auto.")
        budget = data.get("budget", {})
        if not isinstance(budget, dict) or set(budget) - {f.name for f in fields(Budget)}:
            raise Invalid("'auto.budget' must hold max_pack_mb, max_mflops and max_drop")
        try:
            budget = Budget(**budget)
        except ConfigError as e:
            raise Invalid(f"'auto.budget': {e}") from None
        return cls(tuple(AutoCandidate.from_json(c, f"auto.candidates.{i}.") for i, c in enumerate(candidates)),
                   field_of(data, "winner", str, "auto."), field_of(data, "reason", str, "auto."),
                   *(field_of(data, k, number, "auto.") for k in ("schedule_fraction", "search_seconds",
                                                                  "final_seconds")),
                   budget, data.get("best_val_accuracy"))

    def to_json(self) -> dict:
        out = {"winner": self.winner, "reason": self.reason, "budget": asdict(self.budget),
               "schedule_fraction": self.schedule_fraction, "best_val_accuracy": self.best_val_accuracy,
               "candidates": [c.to_json() for c in self.candidates], "search_seconds": self.search_seconds,
               "final_seconds": self.final_seconds, "total_seconds": self.total_seconds}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class PhaseLog:
    """One training phase of a task as its record keeps it (``training.phases``): its name, the seconds it took
    and, for phases that trained, its epochs, final validation accuracy and per-epoch log (a method's own figures:
    NetTailor's alphas, channel attention's scales)."""

    name: str
    seconds: float
    epochs: int | None = None  # None: a step that trains nothing (NetTailor's pruning, flex's scoring)
    val_accuracy: float | None = None
    history: tuple[dict, ...] = ()

    @classmethod
    def all_of(cls, training: Any) -> tuple[PhaseLog, ...]:
        phases = field_of(training, "phases", list, "training.")
        out = []
        for i, p in enumerate(phases):
            at = f"training.phases.{i}."
            history = p.get("history", []) if isinstance(p, dict) else []
            out.append(cls(field_of(p, "name", str, at), float(field_of(p, "seconds", (int, float), at)),
                           p.get("epochs"), p.get("val_accuracy"),
                           tuple(h for h in history if isinstance(h, dict))))
        return tuple(out)


@dataclass(frozen=True)
class TaskRecord:
    """``tasks/<task>/task.json``, parsed and checked once: typed fields for what the runtime, export, eval and the
    tools read; ``raw`` is the whole record, for the method that wrote it (its own fields). ``data`` and
    ``metrics`` may be absent (a pack assembled by hand); where present, every field is checked."""

    KIND: ClassVar[str] = "task"
    task: str
    method: str
    backbone_sha256: str
    classes: tuple[str, ...]
    preprocess: Preprocess
    pack: FileRef
    data_spec: str | None  # the task spec it was trained from (built-in name, imagefolder:PATH, ...); None: not said
    metrics: Metrics | None  # None: a pack written without training figures (still served; tools show "-")
    auto: AutoChoice | None  # tailorrt.training.auto's record of how --method auto chose (None: the method was given)
    phases: tuple[PhaseLog, ...]  # how it was trained (empty: not said)
    raw: dict = field(compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> TaskRecord:
        classes = field_of(data, "classes", list)
        if not classes or not all(isinstance(c, str) for c in classes):
            raise Invalid("'classes' must be a non-empty list of class names")
        pre = field_of(data, "preprocess", dict)
        check_preprocess(pre)
        files = field_of(data, "files", dict)
        if len(files) != 1:
            raise Invalid("'files' must name exactly one weights file")
        (name, entry), = files.items()
        if not FILE_NAME.fullmatch(name) or ".." in name:
            raise Invalid(f"'files' must name a plain file name, not {name!r}")
        auto = data.get("auto")
        return cls(task=field_of(data, "task", str), method=field_of(data, "method", str),
                   backbone_sha256=sha(data, "backbone_sha256"), classes=tuple(classes),
                   preprocess=Preprocess.from_json(pre),
                   pack=FileRef(name, sha(entry, "sha256", f"files.{name}."),
                                field_of(entry, "bytes", int, f"files.{name}.")),
                   data_spec=field_of(field_of(data, "data", dict), "spec", str, "data.") if "data" in data else None,
                   metrics=Metrics.from_json(field_of(data, "metrics", dict)) if "metrics" in data else None,
                   auto=None if auto is None else AutoChoice.from_json(auto),
                   phases=PhaseLog.all_of(data["training"]) if "training" in data else (),
                   raw=data)


TASK_FIELDS = ("format_version", "task", "method", "backbone_sha256", "classes", "preprocess", "files", "metrics",
               "auto")  # the fields TaskDraft types; "data" is its summary, with data_spec as its "spec"


@dataclass(frozen=True)
class TaskDraft:
    """A task's record as training knows it before its pack is written: :meth:`to_json` adds the task's name and
    its weights file (``TrainingDir.write_task``), and the result is read back as a :class:`TaskRecord` before it is
    written, so a writer cannot write what the reader refuses. ``extra`` holds the method's own fields and the
    run's (its architecture, config, training phases, versions, machine, the data's summary)."""

    method: str
    backbone_sha256: str
    classes: tuple[str, ...]
    preprocess: Preprocess
    data_spec: str | None = None
    metrics: Metrics | None = None
    auto: AutoChoice | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, record: TaskRecord) -> TaskDraft:
        """The draft a record was written from (to write it again under another name, or changed)."""
        return cls(record.method, record.backbone_sha256, record.classes, record.preprocess, record.data_spec,
                   record.metrics, record.auto, {k: v for k, v in record.raw.items() if k not in TASK_FIELDS})

    def to_json(self, task: str, pack: FileRef) -> dict:
        """``task.json`` of this draft for the task ``task`` whose weights are ``pack``."""
        out = {**self.extra, "format_version": FORMAT_VERSION, "task": task, "method": self.method,
               "backbone_sha256": self.backbone_sha256, "classes": list(self.classes),
               "preprocess": self.preprocess.to_json(),
               "files": {pack.name: {"sha256": pack.sha256, "bytes": pack.bytes}}}
        out.pop("data", None)
        if self.data_spec is not None:
            out["data"] = {**self.extra.get("data", {}), "spec": self.data_spec}
        if self.metrics is not None:
            out["metrics"] = self.metrics.to_json()
        if self.auto is not None:
            out["auto"] = self.auto.to_json()
        return out


@dataclass(frozen=True)
class BackboneRecord:
    """``backbone/backbone.json``, parsed and checked once."""

    KIND: ClassVar[str] = "backbone"
    name: str
    sha256: str
    spec: BackboneSpec
    input_size: int
    bytes: int
    params: int
    raw: dict = field(compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict) -> BackboneRecord:
        return cls(name=field_of(data, "name", str), sha256=sha(data, "sha256"),
                   spec=_spec(field_of(data, "spec", dict)),
                   **{k: field_of(data, k, int) for k in ("input_size", "bytes", "params")}, raw=data)

    def to_json(self) -> dict:
        """``backbone.json`` of this record: its typed fields over ``raw`` (as the writer built it: the source,
        units, normalisation, versions and date)."""
        return {**self.raw, "format_version": FORMAT_VERSION, "name": self.name, "sha256": self.sha256,
                "spec": self.spec.to_json(), "input_size": self.input_size, "bytes": self.bytes,
                "params": self.params}


def _spec(data: dict) -> BackboneSpec:
    """``spec`` of backbone.json, as the plain :class:`~tailorrt.backbone_spec.BackboneSpec` it was written from."""
    try:
        return BackboneSpec.from_json(data)
    except (KeyError, TypeError, ValueError) as e:
        raise Invalid(f"'spec' is not a backbone's spec this version can build ({type(e).__name__}: {e})") from e


def check_export(data: dict) -> None:
    from tailorrt import kinds

    record_kind = field_of(data, "kind", str)
    kind = kinds.by_record_kind(record_kind)
    if kind is None:
        known = ", ".join(k.record_kind for k in kinds.kinds())
        raise Invalid(f"'kind' must be one of {known}, not {record_kind!r}")
    kind.check_record(data)

