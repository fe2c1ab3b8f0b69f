"""NetTailor's architecture selection, as the paper does it (section 3.5 and its training details).

A *candidate* ``k`` drops the ``k`` universal blocks of lowest attention, the proxies under the thresholds and
whatever that leaves without an input or without a reader; its batch-norm statistics are re-estimated and it
is fine-tuned; then its validation accuracy is measured. The leanest candidate within ``tolerance`` points of
the teacher's validation accuracy, and at most the teacher's FLOPs, is the task's network. When none is within
the tolerance, the most accurate candidate tried (all are under the FLOPs cap) is, and the record says so.

Accuracy falls as ``k`` grows, so ``k`` is found by bisection over the candidates under the FLOPs cap: on a
backbone of ``L`` blocks a search fine-tunes about ``log2(L + 1)`` candidates, not ``L``. Each candidate is one
fine-tune phase with its own checkpoint (``finetune-k<k>``), so a search killed between or inside candidates
resumes where it stopped. This module holds the search; :mod:`tailorrt.training.methods.nettailor` supplies the
training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Plan:
    """What dropping ``k`` universal blocks leaves, known before any training."""

    k: int
    connected: bool
    flops: int
    universal_kept: int
    proxies_kept: int


@dataclass(frozen=True)
class Candidate:
    """A fine-tuned candidate: its plan and its validation accuracy before and after fine-tuning."""

    k: int
    universal_kept: int
    proxies_kept: int
    flops: int
    val_before: float  # after pruning and re-estimating batch-norm statistics, before fine-tuning
    val_accuracy: float  # after fine-tuning
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Selection:
    """The outcome of a search: every candidate fine-tuned (in the order tried) and the one kept."""

    candidates: tuple[Candidate, ...]
    chosen: Candidate
    within_tolerance: bool

    @property
    def tried(self) -> list[int]:
        return [c.k for c in self.candidates]


def eligible(plans: list[Plan], flops_cap: int) -> list[int]:
    """The ``k`` that leave a path to the classifier at no more than ``flops_cap`` FLOPs, in increasing order."""
    return sorted(p.k for p in plans if p.connected and p.flops <= flops_cap)


def search(ks: list[int], evaluate: Callable[[int], Candidate], passes: Callable[[Candidate], bool]) -> Selection:
    """The largest ``k`` of ``ks`` (increasing) whose candidate ``passes``, found by bisection, assuming that a
    candidate that fails makes every larger ``k`` fail too. Each ``k`` is evaluated at most once. With no candidate
    passing, the most accurate one evaluated is chosen (ties: the leaner)."""
    if not ks:
        raise ValueError("no candidate to search")
    done: dict[int, Candidate] = {}

    def run(i: int) -> Candidate:
        if ks[i] not in done:
            done[ks[i]] = evaluate(ks[i])
        return done[ks[i]]

    lo, hi = -1, len(ks) - 1  # invariant: ks[lo] passes (lo = -1: none known to), every index above hi fails
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if passes(run(mid)):
            lo = mid
        else:
            hi = mid - 1
    tried = tuple(done.values())
    if lo >= 0:
        return Selection(tried, done[ks[lo]], True)
    best = max(tried, key=lambda c: (c.val_accuracy, -c.flops))
    return Selection(tried, best, False)
