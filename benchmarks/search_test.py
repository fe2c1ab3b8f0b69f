"""Every candidate of a NetTailor task's architecture search, measured on the test split as well.

    python benchmarks/search_test.py --model-dir runs/demo --task synth-digits
    python benchmarks/search_test.py --model-dir /tmp/fmnist/runs --task fashion-mnist --data-dir /tmp/fmnist
    python benchmarks/search_test.py --model-dir /tmp/fm/runs --task fashion-mnist-2000-6000 --all   # every k
    python benchmarks/search_test.py --model-dir /tmp/fm/runs --task fashion-mnist-2000-6000 \
        --also imagefolder:/tmp/fm/fashion-mnist-2000-6000-10000-pool   # and on that folder's test split

The search keeps the leanest candidate whose difference to the teacher, image by image on the validation split, is
within ``--tolerance``; this asks what the test split says about each candidate it fine-tuned. It rebuilds each
candidate from the checkpoints ``tailor train`` left in ``<model-dir>/.work/<task>`` (the student, then each
``finetune-k<k>`` phase: pruned, batch norms re-estimated as in training, fine-tuned weights restored) and prints,
for the teacher, the unpruned student (what a candidate's student had lost before any block was dropped) and each
candidate, validation and test accuracy and the difference to the teacher on the same images with the half-width of
its 95% interval (how much of a difference the split's size can tell from noise).

``--all`` also fine-tunes every candidate under the FLOPs cap that the search did not try (each its own resumable
phase in the work dir, as the search would have run it; the task's pack is not touched), and then replays the rule
over them: the bisection the search runs, the same with one more candidate tried above the first that failed (what
a search that does not trust accuracy to fall with ``k`` would pay for), and an exhaustive search; for each, the
candidate it keeps, the fine-tunes it costs and that candidate's test figures. Nothing else is trained; it needs the
task's data where training found it.

``--also SPEC`` measures every network on another task's test split too (same classes), in two more columns: for
example unused images of the pool the training and validation images came from (``fashion_mnist.py
--test-from-pool``), which tells a difference between validation and test that is the test set's own distribution
from one that is the validation split's noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--all", action="store_true", help="Fine-tune every untried candidate and replay the rule.")
    ap.add_argument("--also", action="append", default=[], metavar="SPEC",
                    help="Another task (same classes) whose test split is measured too (repeatable).")
    args = ap.parse_args()

    import torch

    from tailorrt.cpu import cpu_summary
    from tailorrt.training.datasets import load_task
    from tailorrt.training.methods.nettailor import ArchitectureSearch, NetTailorConfig
    from tailorrt.training.methods.parts.selection import SearchRecord, eligible
    from tailorrt.training.methods.parts.student import Student
    from tailorrt.training.packs import TrainingDir
    from tailorrt.training.paired import Paired
    from tailorrt.training.phases import Trainer, correct
    from tailorrt.training.teacher import Teacher

    print(f"CPU: {cpu_summary()}", flush=True)
    mdir = TrainingDir(args.model_dir)
    backbone, _ = mdir.load_backbone()
    rec = mdir.task_record(args.task)
    prune = SearchRecord.from_json(rec.metrics.extra["prune"])  # NetTailor's own figures
    if prune is None:
        raise SystemExit(f"{args.task} was searched before the paired comparison; train it again")
    cfg = NetTailorConfig.from_json(rec.raw["config"])
    data = load_task(rec.data_spec, data_dir=args.data_dir, preprocess=rec.preprocess, download=False)
    device = torch.device("cpu")
    trainer = Trainer(device=device, work_dir=args.model_dir / ".work" / args.task)
    n = len(data.classes)
    teacher = Teacher(backbone, n)
    trainer.restore(cfg.teacher.name, teacher)
    teacher.eval()
    student = Student(backbone, n, max_skip=cfg.max_skip, own_norms=cfg.universal_norms)
    trainer.restore(cfg.student.name, student)
    search = ArchitectureSearch(cfg, backbone, n, student.state_dict(), teacher, data, trainer)
    splits = {"val": data.val, "test": data.test}
    for spec in args.also:
        other = load_task(spec, data_dir=args.data_dir, preprocess=rec.preprocess, download=False)
        if other.classes != data.classes:
            raise SystemExit(f"--also {spec}: its classes {other.classes} are not the task's {data.classes}")
        splits[Path(spec.split(":", 1)[-1]).name] = other.test
    right = {"val": search.teacher_right, **{name: correct(teacher, split, device)
                                              for name, split in splits.items() if name != "val"}}
    print("teacher: " + ", ".join(f"{name} {_pct(right[name])} ({len(split)} images)" for name, split in splits.items())
          + f"; tolerance {prune.tolerance} points on val. Below, each network minus the teacher on the same "
          "images, +- the half-width of its 95% interval.")
    teacher_flops = prune.teacher_flops
    ks = [c.k for c in prune.candidates]
    if args.all:
        ks = sorted(set(ks) | set(eligible(search.plans(), teacher_flops)))
    found = {}  # k -> (candidate, its test comparison, the teacher's FLOPs)
    rows = [("student before any pruning", "", "", student, None)]
    for k in ks:
        cand = search.evaluate(k)  # a recorded one is read back; an untried one is fine-tuned now (--all)
        net, _ = search.restore(k)
        rows.append((str(k), str(cand.universal_kept), f"{cand.flops / teacher_flops:.2f}x", net, cand))
    columns = " | ".join(f"{name} % | vs teacher ({name})" for name in splits)
    print("| k | universal kept | FLOPs vs teacher | " + columns + " | |\n" + "|---" * (4 + 2 * len(splits)) + "|")
    for k, kept, flops, net, cand in rows:
        cells, test = [], None
        for name, split in splits.items():
            mine = correct(net, split, device)
            paired = Paired.of(mine, right[name])
            cells += [_pct(mine), paired.words()]
            test = paired if name == "test" else test
        if cand is not None:
            found[cand.k] = (cand, test, teacher_flops)
        else:
            student_val = Paired.of(correct(net, data.val, device), right["val"]).diff
        recorded = [str(c.k) for c in prune.candidates]
        chosen = "chosen" if k == str(prune.chosen) else "(--all)" if cand is not None and k not in recorded else ""
        print(f"| {k} | {kept} | {flops} | {' | '.join(cells)} | {chosen} |", flush=True)
    if args.all:
        replay(found, cfg.tolerance, student_val)


def replay(found: dict, tolerance: float, student: float) -> None:
    """The rule over every candidate: the bisection, the bisection with one more try, and an exhaustive search."""
    from tailorrt.training.methods.parts.selection import choose, passes, search

    ks = sorted(found)
    plain = search(ks, lambda k: found[k][0], tolerance, student)
    failed = [k for k in plain.tried if not passes(plain.fitted[k], tolerance, student) and k > plain.chosen.k]
    more = [k for k in ks if failed and k > min(failed) and k not in plain.tried][:1]
    extra = choose([found[k][0] for k in plain.tried + more], tolerance, student)
    every = choose([found[k][0] for k in ks], tolerance, student)
    print("\n| search | fine-tunes | kept k | FLOPs vs teacher | vs teacher (val) | in the monotone fit | vs teacher "
          "(test) |\n|---|---|---|---|---|---|---|")
    for name, sel in (("bisection (tailor train)", plain), ("bisection + one more above the first failure", extra),
                      ("exhaustive", every)):
        cand, test, teacher_flops = found[sel.chosen.k]
        print(f"| {name} | {len(sel.tried)} | {cand.k} | {cand.flops / teacher_flops:.2f}x | "
              f"{cand.vs_teacher.words()} | {sel.fitted[cand.k]:+.2f} | {test.words()} |")
    order = [found[k][0].vs_teacher.diff for k in ks]
    rises = [(ks[i], ks[i + 1]) for i in range(len(ks) - 1) if order[i + 1] > order[i]]
    print(f"\nk where accuracy on val rose with k (not monotone): {rises or 'none'}")


def _pct(right) -> str:
    from tailorrt.training.phases import percent

    return f"{percent(right):.2f}"


if __name__ == "__main__":
    main()
