"""Turning what callers send (PIL images, arrays, tensors, paths, encoded bytes) into a task's input batch.

Every image goes through the task's own preprocessing (:class:`tailorrt.preprocess.Preprocess`: numpy and PIL,
no torch). Encoded images are bounded before any pixel is decoded:

- only the formats in ``Limits.formats`` are opened (PIL knows dozens, some with decoders that run external
  programs or were never meant for untrusted input);
- every image's header is read first: its pixel count against ``max_pixels``, the request's total against
  ``max_request_pixels`` and its image count against ``max_images``, so a request that would be refused is
  refused before any decoding work;
- the memory a decode will take (pixels x bytes per pixel of its mode, the RGB conversion and the resize) is
  reserved from a :class:`DecodeBudget` that all requests of a process share; an image larger
  than the whole budget is refused (413), and one that finds the budget taken waits a little, then gets
  :class:`~tailorrt.errors.OverloadedError` (503). A request's images are decoded one at a time.
"""

from __future__ import annotations

import io
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tailorrt.errors import BadInputError, InputTooLargeError, OverloadedError
from tailorrt.heap import trim_heap
from tailorrt.limits import MIB, Limits
from tailorrt.preprocess import Preprocess

__all__ = ["DecodeBudget", "decode", "decode_cost", "is_batch", "open_image", "to_batch"]

# Bytes per pixel that PIL stores for a mode (1-bit images are stored a byte per pixel); others use 4
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Decoders that fill a buffer of their own (bytes per pixel) before PIL copies it into the image
_DECODER_BYTES = {"WEBP": 8}
TRIM_AFTER_BYTES = 64 * MIB  # a decode this large hands its memory back to the OS when it is done


class DecodeBudget:
    """The memory that image decodes in flight may take together; shared by every request of a process."""

    def __init__(self, limit_bytes: int, wait_s: float = 2.0) -> None:
        self.limit, self.wait_s = limit_bytes, wait_s
        self.used = self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget while the block runs (waiting at most ``wait_s`` for it)."""
        if self.limit and nbytes > self.limit:
            raise InputTooLargeError(f"decoding this image needs about {nbytes / MIB:,.0f} MB, over the decode "
                                     f"budget of {self.limit / MIB:,.0f} MB")
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.limit and self.used + nbytes > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OverloadedError(f"{self.used / MIB:,.0f} MB of images are being decoded (budget "
                                          f"{self.limit / MIB:,.0f} MB); retry later")
                self._cond.wait(left)
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


def open_image(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Read an encoded image's header (no pixels yet), refusing empty data, other formats and oversized images."""
    if not data:
        raise BadInputError("empty image")
    Image.init()  # registers every plugin once (otherwise formats=... fails on one not loaded yet)
    with _decode_errors(limits):
        img = Image.open(io.BytesIO(data), formats=limits.formats)
    _check_pixels(img.size, limits)
    return img


def decode(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Decode an encoded image (in its own mode), refusing what :func:`open_image` refuses and truncated data."""
    img = open_image(data, limits)
    with _decode_errors(limits):
        img.load()
    return img


def decode_cost(img: Image.Image) -> int:
    """Upper bound of the bytes that decoding and preprocessing ``img`` hold at once: the decoded image, its RGB
    conversion, room for two full-size uint8 copies (what the tensor resize before PIL's held; PIL resizes the RGB
    image in place of them, so this is an upper bound) and the decoder's own buffer (checked against measured
    peaks by ``benchmarks/decode_bomb.py calibrate``)."""
    w, h = img.size
    per_pixel = (_STORED_BYTES.get(img.mode, 4) + (0 if img.mode == "RGB" else 4) + 6
                 + _DECODER_BYTES.get(img.format or "", 0))
    return int(w * h * per_pixel * 1.1) + MIB


@contextmanager
def _decode_errors(limits: Limits) -> Iterator[None]:
    """PIL's errors while opening or decoding untrusted bytes, as 400 (bad) or 413 (too large)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputTooLargeError(f"image too large: {e}") from e
    except UnidentifiedImageError as e:
        raise BadInputError(f"cannot decode the image: not a {'/'.join(limits.formats)} image") from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise BadInputError(f"cannot decode the image: {e}") from e


def _check_pixels(size: tuple[int, int], limits: Limits) -> None:
    w, h = size
    if w * h > limits.max_pixels:
        raise InputTooLargeError(f"image of {w}x{h} pixels is over the limit of {limits.max_pixels:,} pixels")
    if w < 1 or h < 1:
        raise BadInputError(f"image of {w}x{h} pixels is empty")


def _from_array(arr: np.ndarray, pre: Preprocess, limits: Limits) -> list[np.ndarray]:
    """uint8 ``[H,W,3]``/``[N,H,W,3]`` are raw pixels; float ``[3,S,S]``/``[N,3,S,S]`` are already preprocessed."""
    if arr.dtype == np.uint8:
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
            raise BadInputError(f"uint8 images must be [H,W,C] or [N,H,W,C] with C in 1/3/4, not {list(arr.shape)}")
        _check_pixels((arr.shape[2], arr.shape[1]), limits)
        return [_from_pil(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a), pre) for a in arr]
    if arr.dtype in (np.float32, np.float64, np.float16):
        want = (3, pre.size, pre.size)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != want:
            raise BadInputError(f"float input must be preprocessed [N,3,{pre.size},{pre.size}], not {list(arr.shape)}")
        if not np.isfinite(arr).all():
            raise BadInputError("float input holds NaN or infinity")
        return list(np.ascontiguousarray(arr, dtype=np.float32))
    raise BadInputError(f"unsupported array dtype {arr.dtype}; send uint8 pixels or preprocessed float32")


def _from_pil(img: Image.Image, pre: Preprocess) -> np.ndarray:
    return pre(img)  # converts to RGB (once) when the mode is another


@dataclass
class _Encoded:
    """An encoded image of the request, opened to its header; its pixels are decoded later, under the budget."""

    image: Image.Image

    @property
    def pixels(self) -> int:
        return self.image.size[0] * self.image.size[1]


def _header(item: Any, limits: Limits) -> Any:
    """An encoded image (bytes or a file) opened to its header; other kinds of image as they are."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _Encoded(open_image(bytes(item), limits))
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise BadInputError(f"no image file at {path}")
        return _Encoded(open_image(path.read_bytes(), limits))
    return item


def _tensors(item: Any, pre: Preprocess, limits: Limits, budget: DecodeBudget | None) -> list[np.ndarray]:
    if isinstance(item, _Encoded):
        img, item.image = item.image, None  # this function holds the only reference: freed when it returns
        cost = decode_cost(img)
        with budget.reserve(cost) if budget is not None else nullcontext():
            with _decode_errors(limits):
                img.load()
            tensor = _from_pil(img, pre)
            img.close()
            del img
        if cost >= TRIM_AFTER_BYTES:
            trim_heap()
        return [tensor]
    if isinstance(item, Image.Image):
        _check_pixels(item.size, limits)
        return [_from_pil(item, pre)]
    if _is_torch_tensor(item):
        return _from_array(item.detach().cpu().numpy(), pre, limits)
    if isinstance(item, np.ndarray):
        return _from_array(item, pre, limits)
    raise BadInputError(f"cannot read an image from {type(item).__name__}")


def is_batch(images: Any) -> bool:
    """Whether ``images`` holds several images (a list/tuple, or a 4-d array/tensor)."""
    if isinstance(images, (list, tuple)):
        return True
    return (isinstance(images, np.ndarray) or _is_torch_tensor(images)) and images.ndim == 4


def _is_torch_tensor(item: Any) -> bool:
    """Whether ``item`` is a torch tensor, told without importing torch (a serving install has none)."""
    return type(item).__module__.split(".")[0] == "torch" and hasattr(item, "detach")


def to_batch(images: Any, pre: Preprocess, limits: Limits = Limits(), budget: DecodeBudget | None = None
             ) -> np.ndarray:
    """One image or many, of any accepted kind, as a preprocessed ``[N,3,S,S]`` float32 array.

    Every limit that can be checked without decoding is checked before the first image is decoded; encoded
    images then decode one at a time, each holding its share of ``budget`` (if given) while it does.
    """
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise BadInputError("no images")
    if len(items) > limits.max_images:
        raise InputTooLargeError(f"{len(items)} images in one request; the limit is {limits.max_images}")
    items = [_header(item, limits) for item in items]
    pixels = sum(i.pixels for i in items if isinstance(i, _Encoded))
    if pixels > limits.max_request_pixels:
        raise InputTooLargeError(f"the request's images hold {pixels:,} pixels together; the limit is "
                                 f"{limits.max_request_pixels:,}")
    tensors = [t for item in items for t in _tensors(item, pre, limits, budget)]
    if not tensors:
        raise BadInputError("no images (an empty batch)")
    if len(tensors) > limits.max_images:
        raise InputTooLargeError(f"{len(tensors)} images in one request; the limit is {limits.max_images}")
    return np.stack(tensors).astype(np.float32, copy=False)
