"""The export kinds and the precisions they serve: one module and one registration each, as for methods.

An :class:`ExportKind` holds everything about one output of ``tailor export``: its folder in the model dir, the
``kind`` its ``export.json`` records, the precision and backend that serve it, the flag that makes it, the shared
file its graphs read, how its record is checked, how it is exported and what ``tailor info`` shows of it. Code
elsewhere asks the registry (:func:`get`, :func:`for_precision`, :func:`kinds`) and compares no kind or
precision names of its own.

A new precision is a module here that calls :func:`register` with its :class:`ExportKind`, one line in
:data:`MODULES`, and its export step: a function of an :class:`~tailorrt.export.exporter.ExportContext` in
``tailorrt/export/`` registered for the kind by :func:`tailorrt.export.common.export_step` (the core does not
import the export layer).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tailorrt.errors import ConfigError

DEFAULT_PRECISION = "fp32"
MODULES = ("onnx", "onnx_int8", "bf16", "tensorrt")  # import order is registration order

_REGISTRY: dict[str, ExportKind] = {}


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
    check_record: Callable[[dict], None] = field(default=lambda meta: None, compare=False)
    wanted: Callable[[Any], bool] = field(default=lambda req: False, compare=False)  # ExportRequest -> bool
    check_device: Callable[[str, set[str] | None], None] = field(default=lambda device, flags: None, compare=False)
    summary: Callable[[Any], str] | None = field(default=None, compare=False)  # tailor info's line (ExportRecord)

    def backbone_sha256(self, manifest: dict) -> str:
        value: Any = manifest
        for key in self.backbone_key:
            value = value[key]
        return value


def register(kind: ExportKind) -> ExportKind:
    _REGISTRY[kind.folder] = kind
    return kind


def _loaded() -> dict[str, ExportKind]:
    """The registry, every module of :data:`MODULES` imported (a module imported on its own registers only itself;
    importing is idempotent), kept in :data:`MODULES` order."""
    if len(_REGISTRY) < len(MODULES):
        order = [importlib.import_module(f"tailorrt.kinds.{name}") for name in MODULES]
        folders = [next(v.folder for v in vars(m).values() if isinstance(v, ExportKind)) for m in order]
        ordered = {f: _REGISTRY[f] for f in folders}
        _REGISTRY.clear()
        _REGISTRY.update(ordered)
    return _REGISTRY


def kinds() -> list[ExportKind]:
    """Every export kind, in registration order."""
    return list(_loaded().values())


def get(folder: str) -> ExportKind:
    kind = _loaded().get(folder)
    if kind is None:
        raise ValueError(f"unknown export kind {folder!r}; known: {', '.join(_loaded())}")
    return kind


def by_record_kind(record_kind: str) -> ExportKind | None:
    return next((k for k in kinds() if k.record_kind == record_kind), None)


def precisions() -> tuple[str, ...]:
    """The values of ``--precision``, the default first."""
    return tuple(k.precision for k in kinds() if k.precision is not None)


def for_precision(precision: str) -> ExportKind:
    """The export kind that serves ``precision`` (a ConfigError naming the choices for another)."""
    for k in kinds():
        if k.precision == precision:
            return k
    raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(precisions())}")
