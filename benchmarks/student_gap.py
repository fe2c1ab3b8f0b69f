"""A NetTailor run's teacher and unpruned student against each other, image by image, read from the run's work dir
while its search is still to come (or was stopped): validation, test and any other folder's test split.

    python benchmarks/student_gap.py --model-dir /tmp/fm/runs-6000-seed1 --task fashion-mnist-6000-6000 \
        --folder /tmp/fm/fashion-mnist-6000-6000 --also /tmp/fm/fashion-mnist-6000-6000-10000-pool

The networks are the finished ``teacher`` and ``student`` phases of ``<model-dir>/.work/<task>/`` with the default
NetTailor configuration (the run's own when it used the defaults); the images are preprocessed as the backbone's
input (as ``tailor train`` does for an image folder). Each line: both accuracies and the student minus the teacher
with the half-width of its 95% interval (:class:`tailorrt.training.paired.Paired`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--task", required=True, help="The task's pack name (its work dir under .work/).")
    ap.add_argument("--folder", type=Path, required=True, help="The image folder it trains on.")
    ap.add_argument("--also", type=Path, action="append", default=[], help="Another folder whose test split is "
                    "measured too (repeatable).")
    args = ap.parse_args()

    import torch

    from tailorrt.cpu import cpu_summary
    from tailorrt.preprocess import Preprocess
    from tailorrt.training.datasets import load_task
    from tailorrt.training.methods.nettailor import NetTailorConfig
    from tailorrt.training.methods.parts.student import Student
    from tailorrt.training.packs import TrainingDir
    from tailorrt.training.paired import Paired
    from tailorrt.training.phases import Trainer, correct
    from tailorrt.training.teacher import Teacher

    print(f"CPU: {cpu_summary()}", flush=True)
    mdir = TrainingDir(args.model_dir)
    backbone, _ = mdir.load_backbone()
    spec = mdir.backbone_record().spec
    pre = Preprocess(spec.input_size, spec.mean, spec.std)
    data = load_task(f"imagefolder:{args.folder}", data_dir=Path("data"), preprocess=pre, download=False)
    splits = {"val": data.val, "test": data.test}
    for folder in args.also:
        splits[folder.name] = load_task(f"imagefolder:{folder}", data_dir=Path("data"), preprocess=pre,
                                        download=False).test
    cfg, device = NetTailorConfig(), torch.device("cpu")
    trainer = Trainer(device=device, work_dir=args.model_dir / ".work" / args.task)
    teacher = Teacher(backbone, len(data.classes))
    trainer.restore(cfg.teacher.name, teacher)
    student = Student(backbone, len(data.classes), max_skip=cfg.max_skip, own_norms=cfg.universal_norms)
    trainer.restore(cfg.student.name, student)
    teacher.eval()
    student.eval()
    for name, split in splits.items():
        t, s = correct(teacher, split, device), correct(student, split, device)
        print(f"{name}: teacher {100 * sum(t) / len(t):.2f}%, student {100 * sum(s) / len(s):.2f}% ({len(t)} "
              f"images); student vs teacher {Paired.of(s, t).words()}", flush=True)


if __name__ == "__main__":
    main()
