"""Output agreement between two implementations of the same task network."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]  # NCHW float32 images -> logits


class Agreement:
    """Max absolute logit difference and top-1 agreement of a candidate against a reference, batch by batch;
    with labels, also both accuracies."""

    def __init__(self) -> None:
        self.images = self.agree = self.right_reference = self.right = 0
        self.worst = self.scale = 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> None:
        ref, got = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
        if ref.shape != got.shape:
            raise ValueError(f"output shapes differ: {ref.shape} vs {got.shape}")
        self.worst = max(self.worst, float(np.abs(ref - got).max()) if np.isfinite(got).all() else float("inf"))
        self.scale = max(self.scale, float(np.abs(ref).max()))
        self.agree += int((ref.argmax(1) == got.argmax(1)).sum())
        if labels is not None:
            self.right_reference += int((ref.argmax(1) == labels).sum())
            self.right += int((got.argmax(1) == labels).sum())
        self.images += len(ref)

    def result(self) -> dict:
        return {"images": self.images, "max_abs_logit_diff": self.worst, "max_abs_logit": self.scale,
                "top1_agreement": round(self.agree / self.images, 6)}


def allowed(check: dict, tolerance: float) -> float:
    """The largest logit difference a check accepts: ``tolerance`` times the logits' scale (the reference's largest
    magnitude, at least 1), since float32 rounds relative to the values it holds: a Lite0 task whose logits reach
    173 differed from PyTorch by 2.7e-4, 6e-6 of them."""
    return tolerance * max(1.0, check["max_abs_logit"])


def compare(reference: Forward, candidate: Forward, images: np.ndarray, *, batch_size: int = 64) -> dict:
    """Max absolute logit difference and top-1 agreement over ``images``, in batches."""
    if len(images) == 0:
        raise ValueError("no images to compare on")
    tally = Agreement()
    for start in range(0, len(images), batch_size):
        x = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
        tally.add(reference(x), candidate(x))
    return tally.result()
