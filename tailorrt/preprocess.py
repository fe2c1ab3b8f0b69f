"""How a task's images become the network's input (``preprocess`` of its ``task.json``): one definition, in numpy
and PIL, for training, evaluation, export and serving, so that they cannot drift apart and serving needs neither
torch nor torchvision.

The steps are torchvision's classic ones on a PIL image: :func:`tailorrt.rgb.to_rgb` (orientation, modes, 16-bit),
``Resize((S, S))`` (PIL's bilinear filter, antialiased when it shrinks), ``ToImage`` + ``ToDtype(float32,
scale=True)`` (times ``1/255``) and ``Normalize(mean, std)``; ``tests/test_preprocess.py`` holds them equal to that
torchvision pipeline. The resize runs in PIL rather than on a uint8 tensor: torchvision's uint8 tensor resize takes
another code path on CPUs without AVX2, so its result depends on the machine; PIL's does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tailorrt.rgb import to_rgb

SCALE = np.float32(1.0 / 255)  # ToDtype(float32, scale=True) multiplies by the reciprocal, in float32


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

    def resized(self, image: Image.Image) -> np.ndarray:
        """``image`` upright, in 8-bit RGB, at the task's size: ``[S,S,3]`` uint8."""
        image = to_rgb(image)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(image)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One PIL image as the network's input: ``[3,S,S]`` float32."""
        return self.normalise(self.resized(image)[None])[0]

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """``[N,S,S,3]`` uint8 RGB at the task's size -> normalised ``[N,3,S,S]`` float32."""
        x = pixels.transpose(0, 3, 1, 2).astype(np.float32) * SCALE
        mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
        return np.ascontiguousarray((x - mean) / std)

    def normalise_arrays(self, images: np.ndarray) -> np.ndarray:
        """``[N,H,W,3]`` uint8 RGB -> normalised ``[N,3,S,S]`` float32 (training's in-memory datasets), each image
        resized as :meth:`resized` does when it is not at the task's size."""
        if images.shape[1:3] != (self.size, self.size):
            images = np.stack([self.resized(Image.fromarray(a)) for a in images])
        return self.normalise(images)
