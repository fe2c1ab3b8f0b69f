"""Atomic file writes, hashing and safe tensor (de)serialisation. No pickle anywhere."""

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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

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


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (tensors made contiguous and detached)."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or corrupt file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt") from e


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read weights from safetensors or a ``.pth``/``.pt`` file (``weights_only=True``, never pickle code).

    A ``.pth`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_tensors(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        raise CheckpointError(f"cannot read {path} as a weights-only PyTorch file ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a dict of tensors (a state_dict)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_metadata(path: Path) -> dict[str, str]:
    """The string metadata stored in a safetensors header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e


def staging_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder (mode 755) under ``parent`` in which to assemble something before :func:`replace_dir`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (used to tell abandoned work folders from busy ones)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def recover_swaps(parent: Path) -> None:
    """Finish what a killed :func:`replace_dir` left in ``parent``: an old folder whose replacement never
    arrived is put back; one whose replacement did is deleted."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for old in parent.glob(".*.old-*"):
        m = re.fullmatch(r"\.(.+)\.old-(\d+)", old.name)
        if not m or pid_alive(int(m.group(2))):
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
