"""The model directory's metadata records: ``backbone.json``, ``tasks/<task>/task.json`` and ``onnx|trt/export.json``.

One reader and one writer for all of them. A record is sealed with the sha256 of its content when written
(:mod:`tailorrt.integrity`) and, when read, checked in one step: valid JSON, its seal, its format version,
and the fields the runtime, export and eval rely on (types, sha256 strings, plain file names). A bad or old
record is one :class:`~tailorrt.errors.PackError` naming the file and saying what to do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tailorrt.errors import CheckpointError, PackError
from tailorrt.integrity import seal, unseal
from tailorrt.io import read_json, write_json
from tailorrt.version import __version__

FORMAT_VERSION = 1
HEX64 = re.compile(r"[0-9a-f]{64}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")  # a plain name inside the record's folder

REMEDY = {
    "backbone": "restore it from a copy; every task pack of this model directory was trained on it",
    "task": "restore the pack from a copy or train the task again (tailor train --task ...)",
    "export": "run tailor export again (add --trt for engines)",
}


class _Invalid(Exception):
    """A field that is missing or of the wrong kind (turned into a PackError naming the file)."""


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
    except _Invalid as e:
        raise PackError(f"{path} is not a valid {kind} record: {e}; {remedy}") from None
    return data


# ---------------------------------------------------------------------------------------------- field checks


def _field(data: Any, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if not isinstance(data, dict) or key not in data:
        raise _Invalid(f"'{where}{key}' is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        raise _Invalid(f"'{where}{key}' must be {_names(kind)}, not {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind: type | tuple[type, ...]) -> str:
    return " or ".join({"str": "a string", "int": "an integer", "dict": "an object", "list": "a list",
                        "float": "a number"}.get(k.__name__, k.__name__) for k in _as_tuple(kind))


def _sha(data: Any, key: str, where: str = "") -> str:
    value = _field(data, key, str, where)
    if not HEX64.fullmatch(value):
        raise _Invalid(f"'{where}{key}' is not a sha256 (64 lowercase hex digits)")
    return value


def _file_entry(data: Any, where: str) -> None:
    name = _field(data, "file", str, where)
    if not FILE_NAME.fullmatch(name) or ".." in name:
        raise _Invalid(f"'{where}file' must be a plain file name, not {name!r}")
    _sha(data, "sha256", where)


def _is_number(value: Any, *, positive: bool = False) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (value > 0 or not positive)


def check_preprocess(pre: Any, where: str = "preprocess.") -> None:
    """The fields :class:`~tailorrt.datasets.Preprocess` is built from: a size, 3 means, 3 positive stds."""
    resize = _field(pre, "resize", list, where)
    if not resize or not isinstance(resize[0], int) or isinstance(resize[0], bool) or not 1 <= resize[0] <= 4096:
        raise _Invalid(f"'{where}resize' must start with a size in 1..4096, not {resize[:2]!r}")
    for key, positive in (("mean", False), ("std", True)):
        values = _field(pre, key, list, where)
        if len(values) != 3 or not all(_is_number(v, positive=positive) for v in values):
            raise _Invalid(f"'{where}{key}' must hold 3 finite{' positive' if positive else ''} numbers")


def check_task(meta: dict) -> None:
    for key in ("task", "method"):
        _field(meta, key, str)
    _sha(meta, "backbone_sha256")
    classes = _field(meta, "classes", list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise _Invalid("'classes' must be a non-empty list of class names")
    check_preprocess(_field(meta, "preprocess", dict))
    files = _field(meta, "files", dict)
    if len(files) != 1:
        raise _Invalid("'files' must name exactly one weights file")
    (name, entry), = files.items()
    _sha(entry, "sha256", f"files.{name}.")
    _field(entry, "bytes", int, f"files.{name}.")


def check_backbone(meta: dict) -> None:
    _field(meta, "name", str)
    _field(meta, "spec", dict)
    _sha(meta, "sha256")
    for key in ("input_size", "bytes", "params"):
        _field(meta, key, int)


def check_export(meta: dict) -> None:
    kind = _field(meta, "kind", str)
    if kind in ("onnx", "onnx-int8", "bf16"):
        _sha(_field(meta, "backbone", dict), "sha256", "backbone.")
        if kind != "bf16":
            _file_entry(_field(meta, "shared", dict), "shared.")
    elif kind == "tensorrt":
        _sha(meta, "backbone_sha256")
        if _field(meta, "max_batch", int) < 1:
            raise _Invalid("'max_batch' must be at least 1")
    else:
        raise _Invalid(f"'kind' must be onnx, onnx-int8, bf16 or tensorrt, not {kind!r}")
    for name, entry in _field(meta, "tasks", dict).items():
        if kind != "bf16":
            _file_entry(entry, f"tasks.{name}.")
        if kind == "onnx-int8":
            _file_entry(_field(entry, "check", dict, f"tasks.{name}."), f"tasks.{name}.check.")
        if kind != "tensorrt":
            _sha(entry, "pack_sha256", f"tasks.{name}.")


CHECKS: dict[str, Callable[[dict], None]] = {"backbone": check_backbone, "task": check_task, "export": check_export}
