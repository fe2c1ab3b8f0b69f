"""How a task's images become the network's input (``preprocess`` of its ``task.json``): one definition for training,
evaluation, export and serving. The record part needs neither torch nor torchvision; the transform imports them
when it is first built."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tailorrt.rgb import to_rgb


@dataclass(frozen=True)
class Preprocess:
    """How a task's images become the network's input: resize to a square, scale to [0,1], normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> dict:
        return {"resize": [self.size, self.size], "mean": list(self.mean), "std": list(self.std),
                "layout": "NCHW", "dtype": "float32", "color": "RGB", "scale": "1/255"}

    @classmethod
    def from_json(cls, data: dict) -> Preprocess:
        return cls(int(data["resize"][0]), tuple(data["mean"]), tuple(data["std"]))

    def transform(self) -> Callable:
        """A torchvision transform from a PIL image to the normalised tensor (built once per setting:
        the runtime asks for it on every image)."""
        return _transform(self)

    def normalise_uint8(self, images: np.ndarray):
        """``[N,H,W,3]`` uint8 (already at size) -> normalised ``[N,3,H,W]`` float32 tensor."""
        import torch

        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
        if x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                antialias=True, align_corners=False)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


@functools.lru_cache(maxsize=64)
def _transform(pre: Preprocess) -> Callable:
    import torch
    from torchvision.transforms import v2

    return v2.Compose([v2.Lambda(_upright_rgb), v2.ToImage(), v2.Resize((pre.size, pre.size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))])


def _upright_rgb(image):
    """PIL images through :func:`tailorrt.rgb.to_rgb` (orientation, modes); tensors pass through."""
    return to_rgb(image) if isinstance(image, Image.Image) else image
