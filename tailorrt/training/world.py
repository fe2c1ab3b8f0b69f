"""The built-in offline world: generated, deterministic, seeded image-classification tasks.

Every image is drawn with PIL from a per-split seed, so the same task and split give the same
pixels on every machine. ``synth-source`` (shapes x fill textures, and stroke figures) pretrains the embedded
backbone; the targets reuse that visual vocabulary at clearly different difficulty:
``synth-digits`` (seven-segment digits, easy), ``synth-signs`` (sign-like shapes with an inner
symbol on clutter, medium) and ``synth-glyphs`` (stroke glyphs that share strokes, hard).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 2

DrawFn = Callable[[ImageDraw.ImageDraw, int, np.random.Generator, int], None]


@dataclass(frozen=True)
class SynthTask:
    """A generated task: class names, a drawing function and split sizes."""

    name: str
    classes: tuple[str, ...]
    draw: DrawFn
    sizes: dict[str, int] = field(default_factory=dict)
    noise: float = 8.0
    clutter: float = 0.5

    def split_seed(self, split: str) -> int:
        """A stable seed per (task, split); Python's hash() is salted, crc32 is not."""
        return zlib.crc32(f"{self.name}/{split}".encode())


def generate(task: SynthTask, split: str, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Render a split: uint8 images ``[N, H, W, 3]`` and int64 labels ``[N]`` (class-balanced)."""
    if split not in task.sizes:
        raise KeyError(f"{task.name} has no split {split!r}; splits: {sorted(task.sizes)}")
    n = task.sizes[split]
    rng = np.random.default_rng(task.split_seed(split))
    labels = np.arange(n, dtype=np.int64) % len(task.classes)
    rng.shuffle(labels)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = _render(task, int(label), rng, image_size)
    return images, labels


def _render(task: SynthTask, label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    canvas = size * SUPERSAMPLE
    img = _background(rng, canvas, task.clutter)
    task.draw(ImageDraw.Draw(img), label, rng, canvas)
    img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0.0, task.noise, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- backgrounds


def _background(rng: np.random.Generator, s: int, clutter: float) -> Image.Image:
    base = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    kind = rng.integers(0, 4) if rng.random() < clutter else 0
    if kind == 0:  # flat
        pattern = np.zeros((s, s), np.float32)
    elif kind == 1:  # gradient
        a = rng.uniform(0, 2 * math.pi)
        pattern = (np.cos(a) * xx + np.sin(a) * yy) - 0.5
    elif kind == 2:  # stripes
        a, f = rng.uniform(0, math.pi), rng.uniform(2, 6)
        pattern = 0.5 * np.sin(2 * math.pi * f * (np.cos(a) * xx + np.sin(a) * yy))
    else:  # blobs
        pattern = np.zeros((s, s), np.float32)
        for _ in range(3):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
            pattern += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) - 0.3
    tint = rng.uniform(-90, 90, 3)
    arr = base[None, None, :] + pattern[..., None] * tint[None, None, :]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _contrasting(rng: np.random.Generator, img_draw: ImageDraw.ImageDraw) -> tuple[int, int, int]:
    """A random colour far in brightness from the canvas's mean colour."""
    im = img_draw._image  # the image being drawn on
    mean = float(np.asarray(im, dtype=np.float32).mean())
    lo, hi = (0, 90) if mean > 127 else (165, 255)
    return tuple(int(v) for v in rng.integers(lo, hi + 1, 3))


# --------------------------------------------------------------------------- geometry


def _transform(points: np.ndarray, rng: np.random.Generator, s: int, *, scale: tuple[float, float],
               rot_deg: float, shear: float = 0.0, shift: float = 0.1) -> list[tuple[float, float]]:
    """Map unit-box points (centred at 0) to canvas pixels with a random similarity + shear."""
    k = rng.uniform(*scale) * s
    a = math.radians(rng.uniform(-rot_deg, rot_deg))
    sh = rng.uniform(-shear, shear)
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ np.array([[1, sh], [0, 1]])
    c = s / 2 + rng.uniform(-shift, shift, 2) * s
    out = (points @ m.T) * k + c
    return [tuple(p) for p in out]


def _polygon(kind: str, n_circle: int = 24) -> np.ndarray:
    sides = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6, "octagon": 8,
             "circle": n_circle}
    if kind == "star":
        ang = np.arange(10) * math.pi / 5 - math.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, 0.5, 0.22)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    if kind == "cross":
        a, b = 0.5, 0.17
        return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                         [-b, b], [-a, b], [-a, -b], [-b, -b]])
    n = sides[kind]
    offset = {"square": math.pi / 4, "triangle": -math.pi / 2, "octagon": math.pi / 8}.get(kind, 0.0)
    ang = np.arange(n) * 2 * math.pi / n + offset
    return 0.5 * np.stack([np.cos(ang), np.sin(ang)], 1)


# --------------------------------------------------------------------------- synth-source

SOURCE_SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon", "diamond", "pentagon")
SOURCE_FILLS = ("solid", "hstripes", "vstripes", "diagonal", "checker", "dots", "outline", "half")


def _fill_pattern(fill: str, s: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 mask of the fill texture over the whole canvas."""
    yy, xx = np.mgrid[0:s, 0:s]
    p = max(4, int(s * rng.uniform(0.09, 0.14)))
    if fill == "hstripes":
        return (yy // p) % 2 == 0
    if fill == "vstripes":
        return (xx // p) % 2 == 0
    if fill == "diagonal":
        return ((xx + yy) // p) % 2 == 0
    if fill == "checker":
        return ((xx // p) + (yy // p)) % 2 == 0
    if fill == "dots":
        return ((xx % p) - p / 2) ** 2 + ((yy % p) - p / 2) ** 2 < (p / 3) ** 2
    if fill == "half":
        return xx < s / 2 + rng.uniform(-0.1, 0.1) * s
    return np.ones((s, s), bool)


SOURCE_STROKE_CLASSES = 32
_GRID4 = [(x, y) for y in np.linspace(-0.5, 0.5, 4) for x in np.linspace(-0.5, 0.5, 4)]
_EDGES4 = [(i, j) for i in range(16) for j in range(i + 1, 16)
           if 0 < max(abs(_GRID4[i][0] - _GRID4[j][0]), abs(_GRID4[i][1] - _GRID4[j][1])) <= 0.34]


def _stroke_table() -> list[tuple[int, ...]]:
    """Source stroke figures: 3 strokes on a 4x4 grid (a different grid and class set from synth-glyphs)."""
    rng = np.random.default_rng(7)
    table: list[tuple[int, ...]] = []
    while len(table) < SOURCE_STROKE_CLASSES:
        edges = tuple(sorted(rng.choice(len(_EDGES4), 3, replace=False).tolist()))
        if all(len(set(edges) ^ set(t)) >= 4 for t in table):
            table.append(edges)
    return table


_STROKES = _stroke_table()


def _draw_strokes(d: ImageDraw.ImageDraw, edges: tuple[int, ...], rng: np.random.Generator, s: int) -> None:
    grid = np.array(_GRID4) + rng.normal(0, 0.04, (16, 2))
    pts = np.array([grid[k] for e in edges for k in _EDGES4[e]])
    px = _transform(pts, rng, s, scale=(0.55, 0.85), rot_deg=20, shear=0.15, shift=0.08)
    color, width = _contrasting(rng, d), max(2, int(s * rng.uniform(0.05, 0.09)))
    for i in range(0, len(px), 2):
        d.line([px[i], px[i + 1]], fill=color, width=width)


def _draw_source(d: ImageDraw.ImageDraw, label: int, rng: np.random.Generator, s: int) -> None:
    n_shapes = len(SOURCE_SHAPES) * len(SOURCE_FILLS)
    if label >= n_shapes:
        _draw_strokes(d, _STROKES[label - n_shapes], rng, s)
        return
    shape = SOURCE_SHAPES[label // len(SOURCE_FILLS)]
    fill = SOURCE_FILLS[label % len(SOURCE_FILLS)]
    pts = _transform(_polygon(shape), rng, s, scale=(0.55, 0.9), rot_deg=25)
    color = _contrasting(rng, d)
    mask = Image.new("L", (s, s), 0)
    md = ImageDraw.Draw(mask)
    if fill == "outline":
        md.line(pts + [pts[0]], fill=255, width=max(2, int(s * 0.06)), joint="curve")
    else:
        md.polygon(pts, fill=255)
        tex = _fill_pattern(fill, s, rng)
        mask = Image.fromarray((np.asarray(mask) * tex).astype(np.uint8), "L")
    d._image.paste(color, mask=mask)


# --------------------------------------------------------------------------- synth-digits

_SEGMENTS = {  # seven segments in a unit box, x in [-0.25, 0.25], y in [-0.5, 0.5]
    "a": ((-0.25, -0.5), (0.25, -0.5)), "b": ((0.25, -0.5), (0.25, 0.0)),
    "c": ((0.25, 0.0), (0.25, 0.5)), "d": ((-0.25, 0.5), (0.25, 0.5)),
    "e": ((-0.25, 0.0), (-0.25, 0.5)), "f": ((-0.25, -0.5), (-0.25, 0.0)),
    "g": ((-0.25, 0.0), (0.25, 0.0)),
}
_DIGITS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abfgcd")


def _draw_digit(d: ImageDraw.ImageDraw, label: int, rng: np.random.Generator, s: int) -> None:
    segs = [_SEGMENTS[c] for c in _DIGITS[label]]
    pts = np.array([p for seg in segs for p in seg], dtype=np.float64)
    px = _transform(pts, rng, s, scale=(0.55, 0.8), rot_deg=8, shear=0.25, shift=0.08)
    color, width = _contrasting(rng, d), max(2, int(s * rng.uniform(0.07, 0.11)))
    for i in range(0, len(px), 2):
        d.line([px[i], px[i + 1]], fill=color, width=width)


# --------------------------------------------------------------------------- synth-signs

SIGN_SHAPES = ("circle", "triangle", "diamond", "octagon")
SIGN_SYMBOLS = ("arrow-up", "arrow-down", "arrow-left", "arrow-right", "bar", "cross", "dot")
_SIGN_COLORS = ((200, 30, 30), (30, 60, 200), (230, 190, 20), (30, 150, 60))


def _symbol_lines(symbol: str) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    if symbol == "arrow-up":
        return [((0, 0.18), (0, -0.18)), ((0, -0.18), (-0.1, -0.06)), ((0, -0.18), (0.1, -0.06))]
    if symbol == "arrow-down":
        return [((0, -0.18), (0, 0.18)), ((0, 0.18), (-0.1, 0.06)), ((0, 0.18), (0.1, 0.06))]
    if symbol == "arrow-left":
        return [((0.18, 0), (-0.18, 0)), ((-0.18, 0), (-0.06, -0.1)), ((-0.18, 0), (-0.06, 0.1))]
    if symbol == "arrow-right":
        return [((-0.18, 0), (0.18, 0)), ((0.18, 0), (0.06, -0.1)), ((0.18, 0), (0.06, 0.1))]
    if symbol == "bar":
        return [((-0.17, 0), (0.17, 0))]
    if symbol == "cross":
        return [((-0.13, -0.13), (0.13, 0.13)), ((-0.13, 0.13), (0.13, -0.13))]
    return [((-0.02, 0), (0.02, 0))]


def _draw_sign(d: ImageDraw.ImageDraw, label: int, rng: np.random.Generator, s: int) -> None:
    shape = SIGN_SHAPES[label // len(SIGN_SYMBOLS)]
    symbol = SIGN_SYMBOLS[label % len(SIGN_SYMBOLS)]
    outer = _polygon(shape)
    pts = np.concatenate([outer, 0.72 * outer] + [np.array(l) for l in _symbol_lines(symbol)])
    px = _transform(pts, rng, s, scale=(0.55, 0.9), rot_deg=12, shear=0.15, shift=0.1)
    n = len(outer)
    border = _SIGN_COLORS[rng.integers(len(_SIGN_COLORS))]
    d.polygon(px[:n], fill=border)
    d.polygon(px[n:2 * n], fill=tuple(int(v) for v in rng.integers(200, 256, 3)))
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    width = max(2, int(s * rng.uniform(0.05, 0.08)))
    rest = px[2 * n:]
    for i in range(0, len(rest), 2):
        d.line([rest[i], rest[i + 1]], fill=ink, width=width)
    if symbol == "dot":
        (x, y), r = rest[0], width * 1.3
        d.ellipse([x - r, y - r, x + r, y + r], fill=ink)


# --------------------------------------------------------------------------- synth-glyphs

_GRID = [(x, y) for y in (-0.5, 0.0, 0.5) for x in (-0.5, 0.0, 0.5)]
_EDGES = [(i, j) for i in range(9) for j in range(i + 1, 9)
          if max(abs(_GRID[i][0] - _GRID[j][0]), abs(_GRID[i][1] - _GRID[j][1])) <= 0.5]
GLYPH_CLASSES = 50
GLYPH_STROKES = 4
GLYPH_MIN_DIFF = 2  # classes differ by as little as one moved stroke
GLYPH_JITTER = 0.09
GLYPH_DISTRACTOR = 0.8


def _glyph_table() -> list[tuple[int, ...]]:
    """Each glyph class is a fixed set of strokes on a 3x3 grid; classes share strokes."""
    rng = np.random.default_rng(20190616)
    table: list[tuple[int, ...]] = []
    while len(table) < GLYPH_CLASSES:
        edges = tuple(sorted(rng.choice(len(_EDGES), GLYPH_STROKES, replace=False).tolist()))
        if all(len(set(edges) ^ set(t)) >= GLYPH_MIN_DIFF for t in table):
            table.append(edges)
    return table


_GLYPHS = _glyph_table()


def _draw_glyph(d: ImageDraw.ImageDraw, label: int, rng: np.random.Generator, s: int) -> None:
    grid = np.array(_GRID) + rng.normal(0, GLYPH_JITTER, (9, 2))
    edges = list(_GLYPHS[label])
    pts = np.array([grid[k] for e in edges for k in _EDGES[e]])
    if rng.random() < GLYPH_DISTRACTOR:  # a short stray stroke that belongs to no class
        a, b = rng.uniform(-0.6, 0.6, 2), rng.uniform(-0.25, 0.25, 2)
        pts = np.concatenate([pts, [a, a + b]])
    px = _transform(pts, rng, s, scale=(0.5, 0.75), rot_deg=20, shear=0.15, shift=0.08)
    color, width = _contrasting(rng, d), max(2, int(s * rng.uniform(0.05, 0.09)))
    for i in range(0, len(px), 2):
        d.line([px[i], px[i + 1]], fill=color, width=width)


# --------------------------------------------------------------------------- registry

_TARGET_SIZES = {"train": 4000, "val": 600, "test": 1000}

BUILTIN_TASKS: dict[str, SynthTask] = {
    t.name: t
    for t in (
        SynthTask("synth-source", tuple(f"{sh}-{fi}" for sh in SOURCE_SHAPES for fi in SOURCE_FILLS)
                  + tuple(f"strokes-{i:02d}" for i in range(SOURCE_STROKE_CLASSES)),
                  _draw_source, {"train": 28800, "val": 1920, "test": 1920}, noise=10.0, clutter=0.7),
        SynthTask("synth-digits", tuple(str(i) for i in range(10)), _draw_digit, _TARGET_SIZES,
                  noise=10.0, clutter=0.6),
        SynthTask("synth-signs", tuple(f"{sh}-{sy}" for sh in SIGN_SHAPES for sy in SIGN_SYMBOLS),
                  _draw_sign, _TARGET_SIZES, noise=10.0, clutter=0.8),
        SynthTask("synth-glyphs", tuple(f"glyph-{i:02d}" for i in range(GLYPH_CLASSES)), _draw_glyph,
                  _TARGET_SIZES, noise=14.0, clutter=0.8),
    )
}
