"""Preprocessing in numpy and PIL (what a serving install runs) against torchvision: the same tensors, exactly, for
every kind of image and aspect ratio, and for every built-in task's test split."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from tailorrt.preprocess import Preprocess
from tailorrt.rgb import to_rgb
from tailorrt.training.datasets import TensorTransform
from tailorrt.training.world import BUILTIN_TASKS, generate
from tests.test_files import awkward_images

PRE = Preprocess(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
RNG = np.random.default_rng(7)


def torchvision_pipeline(pre: Preprocess) -> v2.Compose:
    """torchvision's classic transforms on a PIL image, step for step what :class:`Preprocess` defines."""
    return v2.Compose([v2.Lambda(to_rgb),
                       v2.Resize((pre.size, pre.size), InterpolationMode.BILINEAR, antialias=True),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(pre.mean), list(pre.std))])


def odd_images(tmp_path) -> dict[str, Image.Image]:
    """Every mode a file brings, at sizes that shrink, grow and change the aspect ratio, decoded from files."""
    names = awkward_images(tmp_path / "awkward")  # CMYK, 16-bit grey, RGBA, palette, EXIF-rotated
    out = {n: Image.open(tmp_path / "awkward" / n) for n in names}
    for w, h in ((16, 16), (17, 16), (5, 7), (37, 23), (200, 90), (31, 640), (1, 1)):
        pixels = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        out[f"rgb-{w}x{h}.png"] = Image.open(io.BytesIO(buf.getvalue()))
    grey = Image.fromarray(RNG.integers(0, 256, (45, 30), dtype=np.uint8), "L")
    out["grey-30x45"] = grey
    out["la-30x45"] = grey.convert("LA")
    out["bilevel-30x45"] = grey.convert("1")
    palette = Image.fromarray(RNG.integers(0, 256, (50, 21, 3), dtype=np.uint8)).convert("P", colors=64)
    palette.info["transparency"] = 3
    out["palette-transparent-21x50"] = palette
    return out


def test_numpy_preprocessing_equals_torchvision_on_every_kind_of_image(tmp_path):
    reference = torchvision_pipeline(PRE)
    for name, image in odd_images(tmp_path).items():
        got, want = PRE(image), reference(image).numpy()
        assert got.dtype == np.float32 and got.shape == (3, 16, 16), name
        assert np.array_equal(got, want), f"{name}: max |diff| {np.abs(got - want).max():.3g}"


@pytest.mark.parametrize("task", sorted(BUILTIN_TASKS))
def test_every_builtin_test_split_preprocesses_as_torchvision_does(task):
    """The in-memory path of training (a batch of arrays) and the per-image path of serving (PIL) give the
    torchvision pipeline's tensors on the whole test split."""
    images, _ = generate(BUILTIN_TASKS[task], "test", image_size=PRE.size)
    batch = PRE.normalise_arrays(images)
    reference = torchvision_pipeline(PRE)
    served = np.stack([PRE(Image.fromarray(a)) for a in images])
    want = np.stack([reference(Image.fromarray(a)).numpy() for a in images])
    assert np.array_equal(batch, want) and np.array_equal(served, want)


def test_arrays_at_another_size_are_resized_as_images_are():
    images = RNG.integers(0, 256, (3, 23, 37, 3), dtype=np.uint8)
    batch = PRE.normalise_arrays(images)
    assert np.array_equal(batch, np.stack([PRE(Image.fromarray(a)) for a in images]))


def test_the_training_transform_is_the_same_definition():
    image = Image.fromarray(RNG.integers(0, 256, (9, 40, 3), dtype=np.uint8))
    assert np.array_equal(TensorTransform(PRE)(image).numpy(), PRE(image))
    with pytest.raises(TypeError, match="PIL images"):
        TensorTransform(PRE)(torch.zeros(3, 16, 16))
