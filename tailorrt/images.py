"""Turning what callers send (PIL images, arrays, tensors, paths, encoded bytes) into a task's input batch.

Every image goes through the task's own preprocessing (:class:`tailorrt.datasets.Preprocess`).
Encoded images are checked before they are decoded: their header gives the pixel count, so a
decompression bomb is refused without allocating it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tailorrt.datasets import Preprocess
from tailorrt.errors import BadInputError, InputTooLargeError

DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Limits:
    """Bounds on one image (pixels) and on a batch (images)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = 256


def decode(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Decode an encoded image (PNG, JPEG, ...) to RGB, refusing empty, undecodable, truncated or huge ones."""
    if not data:
        raise BadInputError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_pixels(img.size, limits)
            img.load()
    except Image.DecompressionBombError as e:
        raise InputTooLargeError(f"image too large: {e}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        raise BadInputError(f"cannot decode the image: {e}") from e
    return img.convert("RGB")


def _check_pixels(size: tuple[int, int], limits: Limits) -> None:
    w, h = size
    if w * h > limits.max_pixels:
        raise InputTooLargeError(f"image of {w}x{h} pixels is over the limit of {limits.max_pixels:,} pixels")
    if w < 1 or h < 1:
        raise BadInputError(f"image of {w}x{h} pixels is empty")


def _from_array(arr: np.ndarray, pre: Preprocess, limits: Limits) -> list[torch.Tensor]:
    """uint8 ``[H,W,3]``/``[N,H,W,3]`` are raw pixels; float ``[3,S,S]``/``[N,3,S,S]`` are already preprocessed."""
    if arr.dtype == np.uint8:
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
            raise BadInputError(f"uint8 images must be [H,W,C] or [N,H,W,C] with C in 1/3/4, not {list(arr.shape)}")
        _check_pixels((arr.shape[2], arr.shape[1]), limits)
        return [_from_pil(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB"), pre) for a in arr]
    if arr.dtype in (np.float32, np.float64, np.float16):
        want = (3, pre.size, pre.size)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != want:
            raise BadInputError(f"float input must be preprocessed [N,3,{pre.size},{pre.size}], not {list(arr.shape)}")
        if not np.isfinite(arr).all():
            raise BadInputError("float input holds NaN or infinity")
        return list(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
    raise BadInputError(f"unsupported array dtype {arr.dtype}; send uint8 pixels or preprocessed float32")


def _from_pil(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    return pre.transform()(img.convert("RGB"))


def _one(item: Any, pre: Preprocess, limits: Limits) -> list[torch.Tensor]:
    if isinstance(item, Image.Image):
        _check_pixels(item.size, limits)
        return [_from_pil(item, pre)]
    if isinstance(item, (bytes, bytearray, memoryview)):
        return [_from_pil(decode(bytes(item), limits), pre)]
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise BadInputError(f"no image file at {path}")
        return [_from_pil(decode(path.read_bytes(), limits), pre)]
    if isinstance(item, torch.Tensor):
        return _from_array(item.detach().cpu().numpy(), pre, limits)
    if isinstance(item, np.ndarray):
        return _from_array(item, pre, limits)
    raise BadInputError(f"cannot read an image from {type(item).__name__}")


def is_batch(images: Any) -> bool:
    """Whether ``images`` holds several images (a list/tuple, or a 4-d array/tensor)."""
    if isinstance(images, (list, tuple)):
        return True
    return isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4


def to_batch(images: Any, pre: Preprocess, limits: Limits = Limits()) -> np.ndarray:
    """One image or many, of any accepted kind, as a preprocessed ``[N,3,S,S]`` float32 array."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise BadInputError("no images")
    tensors = [t for item in items for t in _one(item, pre, limits)]
    if len(tensors) > limits.max_images:
        raise InputTooLargeError(f"{len(tensors)} images in one request; the limit is {limits.max_images}")
    return torch.stack(tensors).numpy().astype(np.float32, copy=False)
