"""Safe tensor (de)serialisation (safetensors; ``.pth`` through ``torch.load(weights_only=True)``). No pickle anywhere.
The file helpers (atomic writes, JSON, hashing, folder swaps) are :mod:`tailorrt.files`, re-exported here."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tailorrt.errors import CheckpointError
from tailorrt.files import atomic_path


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
    except Exception as e:  # torch raises many types for bad files, some with pages of advice: its first line
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise CheckpointError(f"cannot read {path} as a weights-only PyTorch file ({type(e).__name__}: {first})") from e
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


