"""One row per NetTailor task of some model dirs: what its architecture search kept, and how that compares with the
teacher on validation (what the rule saw) and on test (what it could not see), each image by image with its 95%
interval.

    python benchmarks/search_summary.py /tmp/fm/runs-2000 /tmp/fm/runs-6000 /tmp/fm/runs-20000
    python benchmarks/search_summary.py --replay /tmp/fm/runs-2000-s60   # what today's rule keeps from the same

Reads only each task's ``task.json`` (``metrics.prune``, written by ``tailor train``); nothing is run. ``--replay``
runs today's search (:func:`tailorrt.training.methods.parts.selection.search`) over each run's recorded candidates
instead (over k = 1 up to every universal block: the FLOPs cap is not recorded, and on the embedded backbone every
such k is under it): the candidate it keeps, or the ``k`` it would fine-tune that the run did not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(model_dir: Path) -> list[str]:
    from tailorrt.training.paired import Paired

    out = []
    for meta_path in sorted(model_dir.glob("tasks/*/task.json")):
        meta = json.loads(meta_path.read_text())
        m, data = meta["metrics"], meta["data"]
        prune = m.get("prune") or {}
        if "test" not in prune:
            continue  # not NetTailor, or trained before the paired comparison
        test = {k: Paired.from_json(v) for k, v in prune["test"].items()}
        chosen = next(c for c in prune["candidates"] if c["k"] == prune["chosen"])
        seconds = meta["training"]["seconds"]
        words = "within" if prune["within_tolerance"] else "none within: the best"
        words += "" if prune.get("bar_met", True) else " the teacher, not the student's bar"
        words += "" if prune["resolved"] else ", cannot tell" if not prune["short"] else ""
        words += ", short" if prune["short"] else ""
        out.append(f"| {meta['task']} | {data['train']:,} / {data['val']:,} / {data['test']:,} | "
                   f"{m['teacher_accuracy']:.2f} | {test['student'].bracketed()} | {prune['chosen']} "
                   f"({m['universal_blocks_kept']}/{m['universal_blocks_total']} kept), "
                   f"{m['flops'] / m['teacher_flops']:.2f}x | {Paired.from_json(chosen['vs_teacher']).bracketed()} | "
                   f"{test['chosen'].bracketed()} | {m['accuracy']:.2f} | {words} | {seconds / 60:.0f} |")
    return out


def replay(model_dir: Path) -> list[str]:
    """Today's rule over each NetTailor task's recorded candidates: one line per task."""
    from tailorrt.training.methods.parts.selection import Candidate, search

    out = []
    for meta_path in sorted(model_dir.glob("tasks/*/task.json")):
        metrics = json.loads(meta_path.read_text())["metrics"]
        prune = metrics.get("prune") or {}
        if "student_vs_teacher" not in prune:
            continue
        found = {c["k"]: Candidate.from_json(c) for c in prune["candidates"]}
        student = prune["student_vs_teacher"]["diff"]
        asked: list[int] = []

        def evaluate(k: int, found=found, asked=asked) -> Candidate:
            asked.append(k)
            if k not in found:
                raise LookupError(k)
            return found[k]

        ks = sorted(found) if prune.get("fixed") else list(range(1, metrics["universal_blocks_total"] + 1))
        head = f"{model_dir}/{meta_path.parent.name}: recorded k = {prune['chosen']}, student {student:+.2f}"
        try:
            sel = search(ks, evaluate, prune["tolerance"], student)
        except LookupError as missing:
            out.append(f"{head}; today's rule would fine-tune k = {missing} next (tried {asked[:-1]}), not recorded")
            continue
        bar = "" if sel.within_tolerance else ", no candidate within the bar: the most accurate"
        out.append(f"{head}; today's rule keeps k = {sel.chosen.k} (tried {sel.tried}{bar})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dirs", nargs="+", type=Path)
    ap.add_argument("--replay", action="store_true", help="Today's rule over the recorded candidates.")
    args = ap.parse_args()
    if args.replay:
        print("\n".join(line for d in args.model_dirs for line in replay(d)))
        return
    print("| task | train / val / test images | teacher test % | student vs teacher, test | kept k, FLOPs vs teacher | "
          "kept vs teacher, val (the rule) | kept vs teacher, test | kept test % | verdict | training min |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for d in args.model_dirs:
        print("\n".join(rows(d)))


if __name__ == "__main__":
    main()
