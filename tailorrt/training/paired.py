"""Two classifiers compared image by image on the same images: the difference of their accuracies with its
uncertainty.

On the same ``n`` images, only the images that one model gets right and the other wrong (``gained``: only the first,
``lost``: only the second) carry the difference; the images both get right or both get wrong cancel. So the
difference ``(gained - lost) / n`` is measured far more precisely than two accuracies measured apart, and its
standard error follows from the discordant counts: ``sqrt(gained + lost - (gained - lost)^2 / n) / n``. The interval
is Agresti and Min's (Biometrics 2005): the same Wald interval after adding half an image to each of the four cells
(``gained``, ``lost``, both right, both wrong), which keeps its coverage near 95% at small counts and never shrinks
to a single point when the two models happen to agree on every image of a small split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class Paired:
    """Model A's accuracy minus model B's, in points, on the same ``n`` images."""

    n: int
    gained: int  # images A gets right and B wrong
    lost: int  # images B gets right and A wrong

    def __post_init__(self) -> None:
        if self.n < 1 or self.gained < 0 or self.lost < 0 or self.gained + self.lost > self.n:
            raise ValueError(f"not a paired comparison: n={self.n}, gained={self.gained}, lost={self.lost}")

    @classmethod
    def of(cls, mine: Any, theirs: Any) -> Paired:
        """From two boolean vectors over the same images (torch or numpy): which ones each model gets right."""
        if len(mine) != len(theirs):
            raise ValueError(f"paired comparison of {len(mine)} against {len(theirs)} images")
        return cls(len(mine), int((mine & ~theirs).sum()), int((~mine & theirs).sum()))

    @property
    def diff(self) -> float:
        """The difference in points (A minus B)."""
        return 100.0 * (self.gained - self.lost) / self.n

    @property
    def se(self) -> float:
        """Its standard error in points (the plain estimate, from the discordant counts)."""
        return 100.0 * _se(self.gained, self.lost, self.n)

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """The 95% interval of the difference in points (Agresti-Min: half an image added to every cell)."""
        b, c, n = self.gained + 0.5, self.lost + 0.5, self.n + 2
        centre, half = (b - c) / n, z * _se(b, c, n)
        return 100.0 * (centre - half), 100.0 * (centre + half)

    @property
    def half_width(self) -> float:
        """Half the interval's width in points: the smallest difference this many images can tell from zero."""
        low, high = self.interval()
        return (high - low) / 2

    def to_json(self) -> dict:
        low, high = self.interval()
        return {**asdict(self), "diff": round(self.diff, 3), "se": round(self.se, 3), "low": round(low, 3),
                "high": round(high, 3)}

    @classmethod
    def from_json(cls, data: dict) -> Paired:
        return cls(int(data["n"]), int(data["gained"]), int(data["lost"]))

    def bracketed(self) -> str:
        """``-0.25 [-0.86, +0.36]`` style: the difference and its 95% interval, in points."""
        low, high = self.interval()
        return f"{self.diff:+.2f} [{low:+.2f}, {high:+.2f}]"

    def words(self) -> str:
        """``-0.25 +- 0.61`` style: the difference and the half-width of its 95% interval, in points."""
        return f"{self.diff:+.2f} ± {self.half_width:.2f}"


def _se(gained: float, lost: float, n: float) -> float:
    """The standard error of ``(gained - lost) / n``, as a fraction, from the discordant counts."""
    return math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n
