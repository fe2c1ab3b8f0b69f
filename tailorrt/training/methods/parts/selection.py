"""NetTailor's architecture selection, as the paper does it (section 3.5 and its training details).

A *candidate* ``k`` drops the ``k`` universal blocks of lowest attention, the proxies under the thresholds and
whatever that leaves without an input or without a reader; its batch-norm statistics are re-estimated and it is
fine-tuned; then it is compared with the teacher image by image on the validation split (the *selection split*:
every NetTailor phase runs its fixed number of epochs and keeps its last, so no weight of the teacher or of a
candidate was chosen on it, and the teacher's figure there is as unbiased as the candidate's). The leanest candidate
whose paired difference to the teacher is within ``tolerance`` points of the *bar*, and at most the teacher's FLOPs,
is the task's network. The bar is the better of the teacher and the unpruned student: where the student measured
above the teacher, pruning may not spend that lead (:func:`bar`). When none is within the tolerance, the most
accurate candidate tried (all are under the FLOPs cap) is, and the record says so. The :class:`Verdict` says what
the split could tell: whether the kept candidate's 95% interval is narrower than the tolerance (else the split is
too small to tell candidates apart at it), and whether the kept candidate, or the student before any pruning, is
under the teacher beyond doubt (NetTailor could not match the teacher on this task).

Accuracy falls as ``k`` grows, so ``k`` is found by bisection over the candidates under the FLOPs cap: on a
backbone of ``L`` blocks a search fine-tunes about ``log2(L + 1)`` candidates, not ``L``. Each candidate is one
fine-tune phase with its own checkpoint (``finetune-k<k>``), so a search killed between or inside candidates
resumes where it stopped. This module holds the search; :mod:`tailorrt.training.methods.nettailor` supplies the
training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from tailorrt.training.paired import Paired


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
    """A fine-tuned candidate: its plan, its validation accuracy before and after fine-tuning, and its difference to
    the teacher on the same validation images."""

    k: int
    universal_kept: int
    proxies_kept: int
    flops: int
    val_before: float  # after pruning and re-estimating batch-norm statistics, before fine-tuning
    val_accuracy: float  # after fine-tuning
    seconds: float
    vs_teacher: Paired  # after fine-tuning, image by image against the teacher on the validation split

    def to_json(self) -> dict:
        return {**asdict(self), "vs_teacher": self.vs_teacher.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> Candidate:
        """A candidate as recorded (in ``metrics.prune`` or its phase's file), without what the search derived from
        it (``fitted``); a KeyError when the record predates the paired comparison."""
        fields = {k: v for k, v in data.items() if k != "fitted"}
        return cls(**{**fields, "vs_teacher": Paired.from_json(data["vs_teacher"])})


@dataclass(frozen=True)
class Selection:
    """The outcome of a search: every candidate fine-tuned (in the order tried) and the one kept."""

    candidates: tuple[Candidate, ...]
    chosen: Candidate
    within_tolerance: bool  # the chosen one passed: within the tolerance of the bar (:func:`bar`), not only the teacher
    fitted: dict[int, float]  # k -> its difference to the teacher as the rule read it (the monotone fit)

    @property
    def tried(self) -> list[int]:
        return [c.k for c in self.candidates]


@dataclass(frozen=True)
class Verdict:
    """What the selection split could tell about the kept candidate, against ``tolerance`` points."""

    tolerance: float
    chosen: Paired  # the kept candidate against the teacher
    student: Paired  # the student before any pruning against the teacher
    within_tolerance: bool  # the kept candidate's fitted difference is within the tolerance of the teacher
    fitted: float  # the kept candidate's difference in the monotone fit
    bar_met: bool = True  # the search found a candidate within the tolerance of the bar (:func:`bar`)

    @property
    def resolved(self) -> bool:
        """Whether the split tells differences of the tolerance from noise: the kept candidate's 95% interval is
        at most the tolerance on either side of its estimate."""
        return self.chosen.half_width <= self.tolerance

    @property
    def short(self) -> bool:
        """Beyond doubt short: no candidate is within the tolerance, and the most accurate one, or the student before
        any block was dropped, is more than the tolerance under the teacher with 95% confidence."""
        return not self.within_tolerance and min(self.chosen.interval()[1],
                                                 self.student.interval()[1]) < -self.tolerance

    def words(self) -> str:
        """One line: the kept candidate against the teacher, whether NetTailor matched it, and what the split could
        not tell."""
        n = self.chosen.n
        line = f"{self.chosen.words()} points vs the teacher on {n:,} validation images"
        if abs(self.fitted - self.chosen.diff) >= 0.005:
            line += f" ({self.fitted:+.2f} in the monotone fit)"
        if self.within_tolerance and not self.bar_met:
            line += (f"; no leaner candidate stayed within {self.tolerance:g} points of the unpruned student, which "
                     f"measured {self.student.words()} vs the teacher")
        elif not self.within_tolerance:
            line = (f"NetTailor could not match the teacher here: no candidate within {self.tolerance:g} points; the "
                    f"most accurate is {line}")
            if self.student.diff < -self.tolerance:
                line += f"; the student, before any block was dropped, was already {self.student.words()}"
        if self.short:
            return f"{line}; short beyond the 95% interval"
        if not self.resolved:
            line += (f"; {n:,} images cannot tell {self.tolerance:g} points from noise, so this run cannot show that "
                     "NetTailor matches the teacher")
        return line


@dataclass(frozen=True)
class SearchRecord:
    """``metrics.prune`` of a NetTailor task's record: the rule, the reference it was measured on, every candidate
    (in the order tried, with its difference in the monotone fit), the choice and the :class:`Verdict`, and the same
    comparisons on the test split where the run had one (recorded for the reader, never used by the rule). Written by
    :meth:`to_json` and read back by :meth:`from_json`, once, by everything that shows it."""

    rule: str
    fixed: bool  # --prune-universal: k was given, not searched
    tolerance: float
    proxy_threshold: float
    proxy_relative: float
    reference_images: int  # the selection split (val) every difference is measured on, image by image
    teacher_val_accuracy: float
    teacher_flops: int
    chosen: int  # the kept candidate's k
    candidates: tuple[Candidate, ...]
    fitted: dict[int, float]  # k -> its difference as the rule read it
    student_vs_teacher: Paired
    within_tolerance: bool
    bar_met: bool
    resolved: bool
    short: bool
    words: str
    test: dict[str, Paired]  # "chosen", "student", "k<k>": against the teacher on the test split

    WHY_UNBIASED = ("every phase runs its fixed epochs and keeps its last: no weight of the teacher or of a candidate "
                    "was chosen on this split")

    @property
    def kept(self) -> Candidate:
        return next(c for c in self.candidates if c.k == self.chosen)

    @classmethod
    def from_json(cls, data: dict) -> SearchRecord | None:
        """The search's record, or None for one written before the paired comparison (no intervals to show)."""
        if "student_vs_teacher" not in data or not all("vs_teacher" in c for c in data["candidates"]):
            return None
        return cls(data["rule"], data["fixed"], data["tolerance"], data["proxy_threshold"], data["proxy_relative"],
                   data["reference"]["images"], data["teacher_val_accuracy"], data["teacher_flops"], data["chosen"],
                   tuple(Candidate.from_json(c) for c in data["candidates"]),
                   {c["k"]: c["fitted"] for c in data["candidates"]}, Paired.from_json(data["student_vs_teacher"]),
                   data["within_tolerance"], data.get("bar_met", True), data["resolved"], data["short"],
                   data["words"], {k: Paired.from_json(v) for k, v in data.get("test", {}).items()})

    def to_json(self) -> dict:
        return {"rule": self.rule, "fixed": self.fixed, "tolerance": self.tolerance,
                "proxy_threshold": self.proxy_threshold, "proxy_relative": self.proxy_relative,
                "reference": {"split": "val", "images": self.reference_images, "why_unbiased": self.WHY_UNBIASED},
                "teacher_val_accuracy": self.teacher_val_accuracy, "teacher_flops": self.teacher_flops,
                "chosen": self.chosen, "within_tolerance": self.within_tolerance, "bar_met": self.bar_met,
                "resolved": self.resolved, "short": self.short,
                "half_width": round(self.kept.vs_teacher.half_width, 3),
                "student_vs_teacher": self.student_vs_teacher.to_json(), "words": self.words,
                "candidates": [{**c.to_json(), "fitted": round(self.fitted[c.k], 3)} for c in self.candidates],
                **({"test": {name: p.to_json() for name, p in self.test.items()}} if self.test else {})}


def bar(student: float) -> float:
    """What a candidate is held to, as a difference to the teacher in points: the better of the teacher (0) and the
    unpruned student (``student``). A candidate is the student with blocks dropped; on a small selection split the
    student's lead over the teacher is mostly that split's draw, which the candidates, fine-tuned apart, share
    little of (on Fashion-MNIST's harder task +2.10 on 1,000 validation images was +0.38 on 10,000 unused ones). So
    what pruning loses is measured against the student too, and may not exceed the tolerance there either."""
    return max(0.0, student)


def passes(fitted: float, tolerance: float, student: float) -> bool:
    """Whether a candidate whose fitted difference to the teacher is ``fitted`` is within ``tolerance`` of the bar."""
    return fitted >= bar(student) - tolerance


def eligible(plans: list[Plan], flops_cap: int) -> list[int]:
    """The ``k`` that leave a path to the classifier at no more than ``flops_cap`` FLOPs, in increasing order."""
    return sorted(p.k for p in plans if p.connected and p.flops <= flops_cap)


def monotone_fit(values: list[float]) -> list[float]:
    """The non-increasing sequence nearest to ``values`` in least squares (pool adjacent violators): where a value
    is higher than one before it, the two (and any run they join) are replaced by their mean."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled run
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def search(ks: list[int], evaluate: Callable[[int], Candidate], tolerance: float, student: float) -> Selection:
    """The largest ``k`` of ``ks`` (increasing) whose candidate is within ``tolerance`` points of the teacher, found by
    bisection; each ``k`` is evaluated at most once.

    Dropping blocks should not make a network more accurate, so the differences are read through their monotone fit
    (:func:`monotone_fit`) over the student before any pruning (its difference ``student``) and the candidates
    tried, in order of ``k``: where a leaner candidate measures better than a less lean one (or than the student),
    that is taken for noise and the two are pooled. A candidate passes when its fitted difference is at least
    ``bar(student) - tolerance``; the fitted differences fall with ``k``, so the passing candidates are the first
    ones, and the bisection (which trusts that) finds the last of them. With no candidate passing, the one of
    highest fitted difference is chosen (ties: the higher measured one, then the leaner)."""
    if not ks:
        raise ValueError("no candidate to search")
    done: dict[int, Candidate] = {}

    def passed(i: int) -> bool:
        if ks[i] not in done:
            done[ks[i]] = evaluate(ks[i])
        return passes(choose(list(done.values()), tolerance, student).fitted[ks[i]], tolerance, student)

    lo, hi = -1, len(ks) - 1  # invariant: ks[lo] passed (lo = -1: none known to), every index above hi failed
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if passed(mid):
            lo = mid
        else:
            hi = mid - 1
    return choose(list(done.values()), tolerance, student)


def choose(tried: list[Candidate], tolerance: float, student: float) -> Selection:
    """The rule over the candidates ``tried`` (in the order tried): the leanest whose fitted difference is within
    ``tolerance``, else the one of highest fitted difference (:func:`search`)."""
    by_k = {c.k: c for c in tried}
    order = sorted(by_k)
    fit = dict(zip(order, monotone_fit([student] + [by_k[k].vs_teacher.diff for k in order])[1:]))
    passing = [k for k in order if passes(fit[k], tolerance, student)]
    if passing:  # with every candidate tried: an earlier pass may have been pooled with a later failure
        return Selection(tuple(tried), by_k[max(passing)], True, fit)
    best = max(order, key=lambda k: (fit[k], by_k[k].vs_teacher.diff, k))
    return Selection(tuple(tried), by_k[best], False, fit)
