"""What the ONNX-like export kinds share: their record check and their ``tailor info`` line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tailorrt.record_fields import Invalid, field_of, file_entry, sha

__all__ = ["Invalid", "field_of", "file_entry", "onnx_record", "sha", "shared_summary"]


def onnx_record(*, files: bool = True, check_file: bool = False) -> Callable[[dict], None]:
    """The check of an export record naming its backbone, (with ``files``) a shared file and a file per task,
    (with ``check_file``) each task's stored check images, and each task's pack sha256."""

    def check(data: dict) -> None:
        sha(field_of(data, "backbone", dict), "sha256", "backbone.")
        if files:
            file_entry(field_of(data, "shared", dict), "shared.")
        for name, entry in field_of(data, "tasks", dict).items():
            if files:
                file_entry(entry, f"tasks.{name}.")
            if check_file:
                file_entry(field_of(entry, "check", dict, f"tasks.{name}."), f"tasks.{name}.check.")
            sha(entry, "pack_sha256", f"tasks.{name}.")

    return check


def shared_summary(folder: str, shared: str) -> Callable[[Any], str]:
    """``tailor info``'s line of an export whose graphs read one shared file (of its ExportRecord)."""

    def summary(record: Any) -> str:
        s = record.shared.bytes or 0
        return (f"{folder}/: shared {shared} {s / 1e6:.2f} MB once + {len(record.tasks)} task graphs "
                f"{(record.bytes - s) / 1e6:.2f} MB = {record.bytes / 1e6:.2f} MB")

    return summary
