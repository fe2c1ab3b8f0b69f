"""What checking a dataset's files costs, against one teacher epoch on the same folder.

    apt-get install dataset-fashion-mnist
    python benchmarks/file_check.py --out /tmp/fmnist        # builds the 70,000-PNG folder once (as fashion_mnist.py)

Three figures, measured one after the other in one run on the Fashion-MNIST image folder of
``benchmarks/fashion_mnist.py`` (54,000 train, 6,000 val, 10,000 test PNGs):

1. the check with no cache (``load_task`` of ``imagefolder:``: listing, every file's header and tail read in the
   thread pool, the cache written);
2. the same again, reading the cache (what ``--resume`` and later runs pay);
3. one teacher epoch on the same data: teacher training steps at batch 64 (the schedule of ``fashion_mnist.py``),
   timed over ``--batches`` batches and scaled to the epoch's batches (the steps of an epoch cost the same).

Prints the CPU and writes ``<out>/file-check.result.json``. The page cache is not dropped between the checks (that
needs root and would measure the disk, not the check): the first check reads files the folder's build has just written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fashion_mnist import SOURCE, build_folder  # noqa: E402


def teacher_epoch_seconds(data, backbone, batches: int, batch_size: int) -> tuple[float, int]:
    """Seconds of one teacher epoch over ``data.train`` (measured on ``batches`` batches after two of warm-up)."""
    import torch
    from torch.nn import functional as F

    from tailorrt.training.phases import make_loader
    from tailorrt.training.teacher import Teacher

    teacher = Teacher(backbone, len(data.classes))
    opt = torch.optim.SGD(teacher.parameters(), lr=0.01, momentum=0.9)
    loader = iter(make_loader(data.train, batch_size, shuffle=True, drop_last=True))
    per_epoch = len(data.train) // batch_size

    def step() -> None:
        x, y = next(loader)
        opt.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    return (time.perf_counter() - t0) / batches * per_epoch, per_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for the images and the result.")
    ap.add_argument("--source", type=Path, default=SOURCE, help="Where the idx files are.")
    ap.add_argument("--batches", type=int, default=100, help="Teacher batches timed (scaled to one epoch).")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    import torch

    from tailorrt.cpu import cpu_model, cpu_summary
    from tailorrt.training.backbones import build_backbone
    from tailorrt.training.datasets import DataCheck, Preprocess, load_task

    print(f"CPU: {cpu_model()} ({cpu_summary()}), {os.cpu_count()} cores, torch {torch.__version__}", flush=True)
    folder = build_folder(args.source, args.out / "fashion-mnist")
    cache = args.out / "file-check-cache.json"
    cache.unlink(missing_ok=True)
    backbone, _ = build_backbone("embedded")
    spec = backbone.spec
    pre = Preprocess(spec.input_size, spec.mean, spec.std)
    timings = {}
    for run in ("cold", "cached"):
        t0 = time.perf_counter()
        data = load_task(f"imagefolder:{folder}", data_dir=args.out, preprocess=pre, check=DataCheck(cache=cache))
        timings[run] = time.perf_counter() - t0
        print(f"check ({run}): {timings[run]:.1f} s for {data.files.images:,} files "
              f"({data.files.cached:,} from the cache, {len(data.files.skipped)} skipped)", flush=True)
    epoch, steps = teacher_epoch_seconds(data, backbone, args.batches, args.batch_size)
    print(f"one teacher epoch: {epoch:.0f} s ({steps} batches of {args.batch_size}, from {args.batches} timed)")
    result = {"cpu": cpu_summary(), "cpu_model": cpu_model(), "cores": os.cpu_count(), "files": data.files.images,
              "check_seconds": round(timings["cold"], 2), "cached_check_seconds": round(timings["cached"], 2),
              "teacher_epoch_seconds": round(epoch, 1), "check_over_epoch": round(timings["cold"] / epoch, 4),
              "cached_over_epoch": round(timings["cached"] / epoch, 4),
              "files_per_second": math.floor(data.files.images / timings["cold"])}
    (args.out / "file-check.result.json").write_text(json.dumps(result, indent=1))
    print(f"check / teacher epoch: {result['check_over_epoch']:.3f} (goal < 0.10); cached: "
          f"{result['cached_over_epoch']:.4f}")


if __name__ == "__main__":
    main()
