"""Every candidate of a NetTailor task's architecture search, measured on the test split as well.

    python benchmarks/search_test.py --model-dir runs/demo --task synth-digits
    python benchmarks/search_test.py --model-dir /tmp/fmnist/runs --task fashion-mnist --data-dir /tmp/fmnist

The search keeps the leanest candidate within ``--tolerance`` of the teacher's *validation* accuracy; this asks
what the test split says about each candidate it fine-tuned, to see how far validation and test disagree at the
tolerance's edge. It rebuilds each candidate from the checkpoints ``tailor train`` left in ``<model-dir>/.work/<task>``
(the student, then each ``finetune-k<k>`` phase: pruned, batch norms re-estimated as in training, fine-tuned
weights restored) and prints, for the teacher, the unpruned student (what a candidate's student had lost before any
block was dropped) and each candidate, validation and test accuracy and the difference to the teacher on the same
images with its paired standard error (how much of a difference the split's size can tell from noise).
Nothing is trained; it needs the task's data where training found it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    args = ap.parse_args()

    import torch

    from tailorrt.pack import ModelDir, preprocess_of
    from tailorrt.precision import cpu_summary
    from tailorrt.records import TaskRecord
    from tailorrt.training.datasets import load_task
    from tailorrt.training.methods.nettailor import ArchitectureSearch, NetTailorConfig
    from tailorrt.training.methods.student import Student
    from tailorrt.training.teacher import Teacher
    from tailorrt.training.trainer import Trainer, correct

    print(f"CPU: {cpu_summary()}", flush=True)
    mdir = ModelDir(args.model_dir)
    backbone, _ = mdir.load_backbone()
    meta = mdir.task_meta(args.task)
    prune = meta["metrics"]["prune"]
    cfg = NetTailorConfig.from_json(meta["config"])
    data = load_task(TaskRecord.from_json(meta).data_spec, data_dir=args.data_dir, preprocess=preprocess_of(meta),
                     download=False)
    device = torch.device("cpu")
    trainer = Trainer(device=device, work_dir=args.model_dir / ".work" / args.task)
    n = len(data.classes)
    teacher = Teacher(backbone, n)
    trainer.restore(cfg.teacher.name, teacher)
    teacher.eval()
    student = Student(backbone, n, max_skip=cfg.max_skip)
    trainer.restore(cfg.student.name, student)
    search = ArchitectureSearch(cfg, backbone, n, student.state_dict(), teacher, data, trainer)
    right = {split: correct(teacher, getattr(data, split), device) for split in ("val", "test")}
    print(f"teacher: val {_pct(right['val'])}, test {_pct(right['test'])} (tolerance {prune['tolerance']} points on "
          f"val; a difference below is candidate minus teacher, +- the standard error of that paired difference)")
    rows = [("student before any pruning", "", "", student)]
    for c in prune["candidates"]:
        net, _ = search.restore(c["k"])  # pruned, re-estimated, its finished fine-tune restored
        rows.append((str(c["k"]), str(c["universal_kept"]), f"{c['flops'] / prune['teacher_flops']:.2f}x", net))
    print("| k | universal kept | FLOPs vs teacher | val % | vs teacher (val) | test % | vs teacher (test) | |\n"
          "|---|---|---|---|---|---|---|---|")
    for k, kept, flops, net in rows:
        cells = []
        for split in ("val", "test"):
            mine = correct(net, getattr(data, split), device)
            cells += [_pct(mine), _paired(mine, right[split])]
        chosen = "chosen" if k == str(prune["chosen"]) else ""
        print(f"| {k} | {kept} | {flops} | {' | '.join(cells)} | {chosen} |", flush=True)


def _pct(right) -> str:
    return f"{100.0 * float(right.float().mean()):.2f}"


def _paired(mine, theirs) -> str:
    """``mine`` minus ``theirs`` in points on the same images, with the standard error of a paired difference:
    ``sqrt(discordant - (b - c)^2 / n) / n`` for ``b`` images only one model gets right and ``c`` only the other."""
    n = len(mine)
    b, c = int((mine & ~theirs).sum()), int((~mine & theirs).sum())
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return f"{100.0 * (b - c) / n:+.2f} +- {100.0 * se:.2f}"


if __name__ == "__main__":
    main()
