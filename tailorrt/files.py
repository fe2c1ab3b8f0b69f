"""Atomic file writes, JSON records, hashing and folder swaps: what every part of tailorrt writes files with (no torch
here; tensors are :mod:`tailorrt.training.io`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from tailorrt.errors import CheckpointError


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    """Write sorted, indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """Read JSON, turning a malformed file into a CheckpointError that names it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); delete it or re-create it") from e


def staging_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder (mode 755) under ``parent`` in which to assemble something before :func:`replace_dir`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def recover_swaps(parent: Path) -> None:
    """Finish what a killed :func:`replace_dir` left in ``parent``: an old folder whose replacement never
    arrived is put back; one whose replacement did is deleted."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for old in parent.glob(".*.old-*"):
        m = re.fullmatch(r"\.(.+)\.old-(\d+)", old.name)
        if not m or psutil.pid_exists(int(m.group(2))):
            continue
        final = parent / m.group(1)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Swap a fully written ``tmp_dir`` into place of ``final_dir`` (old one removed after the swap).

    Killed between its two renames, it leaves ``.<name>.old-<pid>``, which :func:`recover_swaps` puts back.
    """
    final_dir = Path(final_dir)
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
