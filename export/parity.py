"""Output agreement between two implementations of the same task network."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]  # NCHW float32 images -> logits


def compare(reference: Forward, candidate: Forward, images: np.ndarray, *, batch_size: int = 64) -> dict:
    """Max absolute logit difference and top-1 agreement over ``images``, in batches."""
    if len(images) == 0:
        raise ValueError("no images to compare on")
    worst, agree = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
        ref, got = np.asarray(reference(x), np.float64), np.asarray(candidate(x), np.float64)
        if ref.shape != got.shape:
            raise ValueError(f"output shapes differ: {ref.shape} vs {got.shape}")
        worst = max(worst, float(np.abs(ref - got).max()) if np.isfinite(got).all() else float("inf"))
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
    return {"images": len(images), "max_abs_logit_diff": worst,
            "top1_agreement": round(agree / len(images), 6)}
