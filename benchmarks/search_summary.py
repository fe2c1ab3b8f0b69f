"""One row per NetTailor task of some model dirs: what its architecture search kept, and how that compares with the
teacher on validation (what the rule saw) and on test (what it could not see), each image by image with its 95%
interval.

    python benchmarks/search_summary.py /tmp/fm/runs-2000 /tmp/fm/runs-6000 /tmp/fm/runs-20000

Reads only each task's ``task.json`` (``metrics.prune``, written by ``tailor train``); nothing is run.
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
        words += "" if prune["resolved"] else ", cannot tell" if not prune["short"] else ""
        words += ", short" if prune["short"] else ""
        out.append(f"| {meta['task']} | {data['train']:,} / {data['val']:,} / {data['test']:,} | "
                   f"{m['teacher_accuracy']:.2f} | {test['student'].bracketed()} | {prune['chosen']} "
                   f"({m['universal_blocks_kept']}/{m['universal_blocks_total']} kept), "
                   f"{m['flops'] / m['teacher_flops']:.2f}x | {Paired.from_json(chosen['vs_teacher']).bracketed()} | "
                   f"{test['chosen'].bracketed()} | {m['accuracy']:.2f} | {words} | {seconds / 60:.0f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dirs", nargs="+", type=Path)
    args = ap.parse_args()
    print("| task | train / val / test images | teacher test % | student vs teacher, test | kept k, FLOPs vs teacher | "
          "kept vs teacher, val (the rule) | kept vs teacher, test | kept test % | verdict | training min |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for d in args.model_dirs:
        print("\n".join(rows(d)))


if __name__ == "__main__":
    main()
