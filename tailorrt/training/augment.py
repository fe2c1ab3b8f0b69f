"""Training-batch augmentation, as the NetTailor reference does it on the Visual Decathlon: each image is padded by
reflection and cropped back at a random offset (a random translation of up to an eighth of its side), and, where
the task allows it, flipped left-right with probability one half. Applied to preprocessed batches on the device, so
it costs a pad and a gather per step, not a decode per image; the validation and test splits are never augmented.

Policies (:data:`POLICIES`): ``none``; ``crop`` (the translation, for tasks whose mirror image is another class:
digits, text, signs); ``crop-flip`` (both, the reference's default for natural images and objects).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from tailorrt.errors import ConfigError

POLICIES = ("none", "crop", "crop-flip")
PAD_FRACTION = 8  # pad by side / 8: the reference pads 72 px images by 8 before a random 72 px crop


def check(policy: str) -> str:
    """``policy`` if it is one of :data:`POLICIES`, else a ConfigError naming them."""
    if policy not in POLICIES:
        raise ConfigError(f"--augment must be one of {', '.join(POLICIES)}, not {policy!r}")
    return policy


def augment(x: torch.Tensor, policy: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A batch ``x`` (N, C, H, W) augmented by ``policy``: the same shape, dtype and memory format."""
    if policy == "none" or x.dim() != 4:
        return x
    n, _, h, w = x.shape
    pad = max(1, min(h, w) // PAD_FRACTION)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu")
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (n, h): each image's source rows
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)
    if policy == "crop-flip":
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    # advanced indexing puts the gathered (n, h, w) first and the channels last
    out = out.permute(0, 3, 1, 2)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return out.contiguous(memory_format=fmt)
