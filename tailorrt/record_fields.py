"""Field checks of the JSON records (``task.json``, ``backbone.json``, ``export.json``): a missing field or one of the
wrong kind is an :class:`Invalid` naming it, which the reader turns into one error naming the file."""

from __future__ import annotations

import math
import re
from typing import Any

HEX64 = re.compile(r"[0-9a-f]{64}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")  # a plain name inside the record's folder
TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # a task pack's name (its folder under tasks/)


class Invalid(Exception):
    """A field that is missing or of the wrong kind (turned into a PackError naming the file)."""


def field_of(data: Any, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    """``data[key]``, which must be of ``kind`` (a bool is not an int here)."""
    if not isinstance(data, dict) or key not in data:
        raise Invalid(f"'{where}{key}' is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        raise Invalid(f"'{where}{key}' must be {_names(kind)}, not {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind: type | tuple[type, ...]) -> str:
    return " or ".join({"str": "a string", "int": "an integer", "dict": "an object", "list": "a list",
                        "float": "a number", "bool": "true or false", "NoneType": "null"}.get(k.__name__, k.__name__)
                       for k in _as_tuple(kind))


def sha(data: Any, key: str, where: str = "") -> str:
    value = field_of(data, key, str, where)
    if not HEX64.fullmatch(value):
        raise Invalid(f"'{where}{key}' is not a sha256 (64 lowercase hex digits)")
    return value


def file_entry(data: Any, where: str) -> None:
    """A ``{"file": plain name, "sha256": ...}`` entry."""
    name = field_of(data, "file", str, where)
    if not FILE_NAME.fullmatch(name) or ".." in name:
        raise Invalid(f"'{where}file' must be a plain file name, not {name!r}")
    sha(data, "sha256", where)


def is_number(value: Any, *, positive: bool = False) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (value > 0 or not positive)
