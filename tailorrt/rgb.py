"""Every decoded image as the 8-bit RGB picture a person sees: one function for training, evaluation and serving.

PIL keeps an image in the mode its file stores, and its own ``convert("RGB")`` loses what the picture is: it ignores
the EXIF orientation (a phone's portrait photo arrives on its side), clips 16-bit values at 255 instead of scaling
them (a 16-bit PNG becomes almost white). :func:`to_rgb` is the one place that decides, so a task never sees
another picture at serving time than it was trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": 32-bit integers, as PIL holds 16-bit data of some files


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` upright (its EXIF orientation applied) in 8-bit RGB.

    - grey, 1-bit, palette and CMYK images are converted as PIL does (a palette's transparency is dropped with the
      rest of the alpha channel);
    - 16-bit (and 32-bit integer) grey is scaled from 0..65535 to 0..255, not clipped;
    - alpha (RGBA, LA, PA) is dropped, keeping the colours under it, as ``convert("RGB")`` and torchvision do.
    """
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT:
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return image.convert("RGB")
