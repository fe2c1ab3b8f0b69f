"""Every candidate of a NetTailor task's architecture search, measured on the test split as well.

    python benchmarks/search_test.py --model-dir runs/demo --task synth-digits
    python benchmarks/search_test.py --model-dir /tmp/fmnist/runs --task fashion-mnist --data-dir /tmp/fmnist

The search keeps the leanest candidate within ``--tolerance`` of the teacher's *validation* accuracy; this asks
what the test split says about each candidate it fine-tuned, to see how far validation and test disagree at the
tolerance's edge. It rebuilds each candidate from the checkpoints ``tailor train`` left in ``<model-dir>/.work/<task>``
(the student, then each ``finetune-k<k>`` phase: pruned, batch norms re-estimated as in training, fine-tuned
weights restored) and prints validation and test accuracy per candidate, the teacher's, and the chosen one.
Nothing is trained; it needs the task's data where training found it.
"""

from __future__ import annotations

import argparse
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
    from tailorrt.training.trainer import Trainer, accuracy

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
    print(f"teacher: val {accuracy(teacher, data.val, device):.2f}%, test {accuracy(teacher, data.test, device):.2f}%"
          f" (tolerance {prune['tolerance']} points on val)")
    print("| k | universal kept | FLOPs vs teacher | val % | test % | |\n|---|---|---|---|---|---|")
    for c in prune["candidates"]:
        net, _ = search.restore(c["k"])  # pruned, re-estimated, its finished fine-tune restored
        chosen = "chosen" if c["k"] == prune["chosen"] else ""
        print(f"| {c['k']} | {c['universal_kept']} | {c['flops'] / prune['teacher_flops']:.2f}x | "
              f"{accuracy(net, data.val, device):.2f} | {accuracy(net, data.test, device):.2f} | {chosen} |", flush=True)


if __name__ == "__main__":
    main()
