"""NetTailor's training choices, one at a time: test accuracy, blocks kept, FLOPs, seconds.

    python benchmarks/nettailor_ablation.py --out /tmp/ablation                      # every variant, every task
    python benchmarks/nettailor_ablation.py --out /tmp/ablation --variants default,global-distill --tasks synth-digits
    python benchmarks/nettailor_ablation.py --out /tmp/hard --tasks imagefolder:/tmp/fm/fashion-mnist-tops-3000 \
        --variants default,augment-crop-flip                                      # a real folder (default schedule)
    python benchmarks/nettailor_ablation.py --out /tmp/ablation --table               # the table of what is done

Each variant is the config ``tailor train`` uses on the task (``NetTailorConfig.quick()`` on a built-in task, the
paper's schedule on real data) with a few fields changed, named below; each is trained from the same teacher
(trained once per task and teacher configuration, and copied into every variant's work dir), through the same code
as ``tailor train``: the student phase, then the architecture search. A finished (task, variant) is kept in
``<out>/<task>/<variant>/result.json`` and not trained again, so the script resumes, and two instances with disjoint
``--variants`` can share ``--out``
(on 2 cores, each with ``--threads 1``). A variant that differs from a finished one only in what comes after the
student phase starts from that one's trained student (the same computation), copied. Seconds are the student phase
plus the search (every candidate's fine-tune): compare them within one table, run the same way.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import time
from pathlib import Path

# variant -> the config fields it changes (dotted paths into NetTailorConfig), against today's defaults
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "before": {"local_distill": False, "finetune.lr": 0.01, "student.epochs": 8},  # the search, earlier training
    "reference-distill": {"distill_logit_weight": 1 / 8},  # the reference's 1/L on the embedded backbone's 8 layers
    "global-distill": {"local_distill": False},
    "finetune-lr-0.01": {"finetune.lr": 0.01},
    "finetune-2": {"finetune.epochs": 2},  # the default before 2026-12-02's second session
    "no-clip": {"student.grad_clip": None, "finetune.grad_clip": None},
    "attention-unclipped": {"alpha_grad_clip": None},
    "alpha-lr-10": {"alpha_lr_mult": 10.0},
    "complexity-1": {"complexity_coeff": 1.0},
    "proxy-relative-0.5": {"proxy_relative": 0.5},
    "proxy-threshold-0.1": {"proxy_threshold": 0.1},
    "student-6": {"student.epochs": 6},
    "student-8": {"student.epochs": 8},
    "finetune-warmup": {"finetune.warmup_epochs": 0.5},
    "finetune-lr-0.02": {"finetune.lr": 0.02},
    # the student's gap on small real tasks (issue 36), in the order it was closed: the rows before shared the
    # universal norms and, at 30 epochs, had no minimum of steps; "owned-norms-5600" owns them with the 5,600-step
    # student real data had then; real data's "default" now owns them with at least 11,200 steps
    "augment-none": {"augment": "none", "student.min_steps": 0, "universal_norms": False},  # real data before
    "augment-crop": {"augment": "crop", "student.min_steps": 0, "universal_norms": False},
    "augment-crop-flip": {"augment": "crop-flip", "student.min_steps": 0, "universal_norms": False},
    "student-60": {"student.epochs": 60, "student.min_steps": 0},
    "augment-none-student-60": {"augment": "none", "student.epochs": 60, "student.min_steps": 0,
                                "universal_norms": False},
    "teacher-coeff-1": {"teacher_coeff": 1.0},
    "augment-crop-teacher-coeff-1": {"augment": "crop", "teacher_coeff": 1.0, "student.min_steps": 0,
                                     "universal_norms": False},
    "augment-crop-student-60": {"augment": "crop", "student.epochs": 60, "student.min_steps": 0,
                                "universal_norms": False},
    "augment-crop-teacher-coeff-30": {"augment": "crop", "teacher_coeff": 30.0},
    "shared-norms": {"universal_norms": False},  # real data's default but the reference's shared norms
    "owned-norms-5600": {"student.min_steps": 5600},  # real data's default before its student was doubled
}
# fields that act only after the student phase (the search): variants that differ only in these train the same
# student, so a finished one's checkpoint is copied rather than trained again
SEARCH_FIELDS = ("finetune.", "proxy_", "tolerance", "universal_drop")


# fields that change the teacher: variants that differ in these train a teacher of their own
TEACHER_FIELDS = ("teacher.", "augment")


def student_fields(variant: str) -> dict:
    return {k: v for k, v in VARIANTS[variant].items() if not k.startswith(SEARCH_FIELDS)}


def teacher_key(variant: str) -> str:
    """The folder of the teacher ``variant`` trains from: ``_teacher``, or one named after its teacher's changes."""
    changes = sorted(f"{k}={v}" for k, v in VARIANTS[variant].items() if k.startswith(TEACHER_FIELDS))
    return "_teacher" + "".join(f"_{c}" for c in changes)
TASKS = ("synth-digits", "synth-signs", "synth-glyphs")


def config(variant: str, builtin: bool):
    from tailorrt.training.methods.base import replace_path
    from tailorrt.training.methods.nettailor import NetTailorConfig

    cfg = NetTailorConfig.quick() if builtin else NetTailorConfig()
    for path, value in VARIANTS[variant].items():
        cfg = replace_path(cfg, path, value)
    return cfg


class Lines:
    """A line per finished phase (no bars: two instances may share a terminal or a log)."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.label, self.t0, self.val = prefix, "", 0.0, None

    def start(self, label: str, total: int, completed: int = 0) -> None:
        self.label, self.t0, self.val = label, time.perf_counter(), None

    def advance(self, n: int = 1, **metrics: float) -> None:
        self.val = metrics.get("val", self.val)

    def finish(self) -> None:
        val = "" if self.val is None else f", val {self.val:.2f}%"
        print(f"{self.prefix}{self.label}: {time.perf_counter() - self.t0:.0f} s{val}", flush=True)


def run(out: Path, task: str, variant: str, student_only: bool = False) -> dict:
    """Train ``variant`` on ``task`` (its teacher shared with every variant) and return its figures; with
    ``student_only``, stop after the student phase and return the student's figures against the teacher."""
    import torch

    from tailorrt.training.backbones import build_backbone
    from tailorrt.training.datasets import Preprocess, load_task, pack_name
    from tailorrt.training.methods.nettailor import train_nettailor, train_teacher
    from tailorrt.training.phases import Trainer
    from tailorrt.training.world import BUILTIN_TASKS

    folder = out / pack_name(task)
    done = folder / variant / "result.json"
    if student_only and (folder / variant / "student.json").is_file():
        return json.loads((folder / variant / "student.json").read_text())
    if done.is_file():
        return json.loads(done.read_text())
    torch.manual_seed(0)
    backbone, _ = build_backbone("embedded")
    backbone.eval()
    spec = backbone.spec
    data = load_task(task, data_dir=Path("data"), preprocess=Preprocess(spec.input_size, spec.mean, spec.std),
                     download=False, seed=0)
    cfg = config(variant, task in BUILTIN_TASKS)
    device = torch.device("cpu")
    teacher_dir = folder / teacher_key(variant)
    teacher_dir.mkdir(parents=True, exist_ok=True)
    with open(teacher_dir / "lock", "w") as lock:  # another instance may be training it
        fcntl.flock(lock, fcntl.LOCK_EX)
        shared = Trainer(device=device, work_dir=teacher_dir)
        if shared.completed(cfg.teacher.name) is None:  # none yet, or one an interrupted run left half-trained
            print(f"{task}: training the teacher once, for every variant", flush=True)
            train_teacher(cfg, backbone, data, shared)
    work = folder / variant / "work"
    work.mkdir(parents=True, exist_ok=True)
    if Trainer(device=device, work_dir=work).completed(cfg.teacher.name) is None:
        shutil.copy(teacher_dir / "teacher.safetensors", work / "teacher.safetensors")
    same = [v for v in VARIANTS if v != variant and student_fields(v) == student_fields(variant)
            and (folder / v / "result.json").is_file()]
    if same and not (work / "student.safetensors").is_file():
        shutil.copy(folder / same[0] / "work" / "student.safetensors", work / "student.safetensors")
    print(f"{task} / {variant}: {VARIANTS[variant] or 'the defaults'}", flush=True)
    t0 = time.perf_counter()
    if student_only:
        row = student_row(cfg, backbone, data, Trainer(device=device, work_dir=work,
                                                       progress=Lines(f"{task} / {variant} ")))
        row.update(task=task, variant=variant, changes=VARIANTS[variant],
                   wall_seconds=round(time.perf_counter() - t0, 1))
        (folder / variant / "student.json").write_text(json.dumps(row, indent=1))
        return row
    result = train_nettailor(cfg, backbone, data, Trainer(device=device, work_dir=work,
                                                          progress=Lines(f"{task} / {variant} ")))
    m = result.metrics
    phases = {p["name"]: p for p in result.phases}
    row = {"task": task, "variant": variant, "changes": {k: v for k, v in VARIANTS[variant].items()},
           "accuracy": m["accuracy"], "teacher_accuracy": m["teacher_accuracy"],
           "student_accuracy": m["student_accuracy"], "flops_ratio": round(m["flops"] / m["teacher_flops"], 3),
           "universal_kept": m["universal_blocks_kept"], "universal_total": m["universal_blocks_total"],
           "proxies_kept": m["proxies_kept"], "task_params": m["task_params"],
           "student_seconds": phases["student"]["seconds"],
           "search_seconds": round(sum(p["seconds"] for n, p in phases.items() if n not in ("teacher", "student")), 1),
           "wall_seconds": round(time.perf_counter() - t0, 1), "prune": m["prune"],
           "alphas": [round(layer.blocks[0].alpha, 2) for layer in result.student.architecture()]}
    done.write_text(json.dumps(row, indent=1))
    return row


def student_row(cfg, backbone, data, trainer) -> dict:
    """The teacher (restored) and the student phase, and the student against the teacher on validation and on test,
    image by image."""
    from tailorrt.training.methods.nettailor import train_student, train_teacher
    from tailorrt.training.paired import Paired
    from tailorrt.training.phases import correct, percent

    teacher, _ = train_teacher(cfg, backbone, data, trainer)
    student, phase = train_student(cfg, backbone, data, trainer, teacher)
    row = {"student_seconds": phase.seconds}
    for split in ("val", "test"):
        t, s = correct(teacher, getattr(data, split), trainer.device), correct(student, getattr(data, split),
                                                                             trainer.device)
        row[split] = {"teacher": round(percent(t), 2), "student": round(percent(s), 2),
                      "student_vs_teacher": Paired.of(s, t).to_json()}
    return row


def student_table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/student.json"))]
    order = {v: i for i, v in enumerate(VARIANTS)}
    rows.sort(key=lambda r: (r["task"], order.get(r["variant"], 99)))
    from tailorrt.training.paired import Paired

    lines = ["| task | variant | teacher val / test % | student val / test % | student vs teacher, val | "
             "student vs teacher, test | student s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        v, t = r["val"], r["test"]
        pv, pt = (Paired.from_json(split["student_vs_teacher"]).bracketed() for split in (v, t))
        lines.append(f"| {r['task']} | {r['variant']} | {v['teacher']:.2f} / {t['teacher']:.2f} | {v['student']:.2f} / "
                     f"{t['student']:.2f} | {pv} | {pt} | {r['student_seconds']:.0f} |")
    return "\n".join(lines)


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/*/result.json"))]
    order = {v: i for i, v in enumerate(VARIANTS)}
    rows.sort(key=lambda r: (order.get(r["variant"], 99), TASKS.index(r["task"]) if r["task"] in TASKS else 9))
    lines = ["| variant | task | test % (teacher) | kept | proxies | FLOPs vs teacher | candidates (k: val %) | "
             "student s | search s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cands = ", ".join(f"{c['k']}: {c['val_accuracy']:.1f}" for c in r["prune"]["candidates"])
        lines.append(f"| {r['variant']} | {r['task']} | {r['accuracy']:.2f} ({r['teacher_accuracy']:.2f}) | "
                     f"{r['universal_kept']}/{r['universal_total']} | {r['proxies_kept']} | {r['flops_ratio']:.2f}x | "
                     f"{cands} (chose {r['prune']['chosen']}) | {r['student_seconds']:.0f} | "
                     f"{r['search_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for teachers, work dirs and results.")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated, of: {', '.join(VARIANTS)}.")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    ap.add_argument("--table", action="store_true", help="Only print the table of the finished runs.")
    ap.add_argument("--student-only", action="store_true",
                    help="Stop each variant after its student phase: the student against the teacher, val and test.")
    args = ap.parse_args()
    if not args.table:
        import torch

        from tailorrt.cpu import cpu_summary

        if args.threads:
            torch.set_num_threads(args.threads)
        print(f"CPU: {cpu_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
        if unknown:
            ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        for variant in args.variants.split(","):
            for task in args.tasks.split(","):
                r = run(args.out, task, variant, args.student_only)
                if args.student_only:
                    print(f"{task} / {variant}: student {r['test']['student']:.2f} on test (teacher "
                          f"{r['test']['teacher']:.2f})", flush=True)
                    continue
                print(f"{task} / {variant}: test {r['accuracy']:.2f} (teacher {r['teacher_accuracy']:.2f}), "
                      f"{r['universal_kept']}/{r['universal_total']} kept, {r['flops_ratio']:.2f}x FLOPs", flush=True)
    print(student_table(args.out) if args.student_only else table(args.out))


if __name__ == "__main__":
    main()
