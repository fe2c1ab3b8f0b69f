"""An export kind (:class:`ExportKind`) and the registry the kind modules of this package register into."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tailorrt.registry import Registry

DEFAULT_PRECISION = "fp32"

KINDS: Registry[ExportKind] = Registry("export kind")  # by folder


@dataclass(frozen=True)
class ExportKind:
    """One output of ``tailor export`` (a folder of the model dir with its ``export.json``)."""

    folder: str  # onnx, onnx-int8, bf16, trt: the folder in the model dir, and the name used everywhere
    record_kind: str  # the "kind" of its export.json
    backend: str  # the Runtime backend that serves it
    flag: str  # what ``tailor export`` needs to write it (" --precision int8")
    precision: str | None = None  # the --precision it serves (None: not chosen by --precision, e.g. TensorRT)
    shared_file: str | None = None  # the file every task graph reads (None: none)
    task_files: bool = True  # whether each task has a file of its own (bf16 only records a check)
    checks_on_load: bool = False  # re-run stored images when a task is loaded, refusing other answers (int8)
    prepacks_shared: bool = True  # sessions may pre-pack the shared weights (not int8's one shared copy)
    autocast: str | None = None  # the torch autocast dtype that runs it (bf16)
    backbone_key: tuple[str, ...] = ("backbone", "sha256")  # where its record names the backbone's sha256
    check_record: Callable[[dict], None] = field(default=lambda data: None, compare=False)
    wanted: Callable[[Any], bool] = field(default=lambda req: False, compare=False)  # ExportRequest -> bool
    check_device: Callable[[str, set[str] | None], None] = field(default=lambda device, flags: None, compare=False)
    summary: Callable[[Any], str] | None = field(default=None, compare=False)  # tailor info's line (ExportRecord)

    def backbone_sha256(self, manifest: dict) -> str:
        value: Any = manifest
        for key in self.backbone_key:
            value = value[key]
        return value


def register(kind: ExportKind) -> ExportKind:
    return KINDS.add(kind.folder, kind)
