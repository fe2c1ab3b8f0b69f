"""NetTailor on real data: Fashion-MNIST as an image folder, on the embedded backbone at 32 px, through `tailor train`.

    apt-get install dataset-fashion-mnist                    # Debian's package: the four idx files
    python benchmarks/fashion_mnist.py --out /tmp/fmnist      # builds the folder once, then trains (all 54,000; 40 min)
    python benchmarks/fashion_mnist.py --out /tmp/fmnist --train-images 27000   # half the training images
    python benchmarks/fashion_mnist.py --out /tmp/fmnist --tailor /other/venv/bin/tailor   # another build, same data

The folder is ``<out>/fashion-mnist/{train,val,test}/<class>/<n>.png``: the 60,000 training images split 54,000 /
6,000 (seeded) and the 10,000 test images, written as the 28 px grey PNGs they are (the task's preprocessing turns
them into 32 px RGB, as for any folder). Then ``tailor train --task imagefolder:<folder> --backbone embedded``
runs with every default but the epochs: ``--teacher-epochs 1 --student-epochs 5 --finetune-epochs 3`` at batch 64
(54,000 images are 13.5x a built-in task's 4,000: at batch 64 the teacher, the student and each candidate's
fine-tune take 4.5x, 9.7x and 13.6x the steps of the built-in 3, 7 and 3 epochs, which a 3-epoch student and a
1-epoch fine-tune showed they need: the README's Fashion-MNIST section); a real folder
otherwise gets the paper's 30/30/15 epochs, about two days on 2 cores. Prints the task's figures against its teacher and
writes them to ``<out>/fashion-mnist.result.json``. ``--train-images N`` trains on the first N training images
(the same validation and test images), for a quicker run on a slow machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
# the schedule: epochs over 54,000 images (13.5x the built-in tasks' 4,000), so fewer of them than the built-in 3/7/3
OPTIONS = ("--teacher-epochs", "1", "--student-epochs", "5", "--finetune-epochs", "3", "--batch-size", "64")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as a numpy array: the magic number gives the type and the dimensions."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte idx files are expected")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def build_folder(source: Path, root: Path, train_images: int = 54000, seed: int = 0) -> Path:
    """Write the image folder once (a finished one is reused): ``train_images`` of the seeded permutation of the
    60,000 training images for training, its last 6,000 for validation, and the 10,000 test images."""
    done = root / ".complete"
    if done.is_file():
        return root
    files = {name: next(iter(sorted(source.glob(f"{name}*"))), None)
             for name in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    missing = [n for n, f in files.items() if f is None]
    if missing:
        sys.exit(f"{source} lacks {', '.join(missing)}: apt-get install dataset-fashion-mnist, or pass --source")
    train_x, train_y = read_idx(files["train-images"]), read_idx(files["train-labels"])
    test_x, test_y = read_idx(files["t10k-images"]), read_idx(files["t10k-labels"])
    order = np.random.default_rng(seed).permutation(len(train_x))
    if not 0 < train_images <= 54000:
        sys.exit(f"--train-images must be in 1..54000, not {train_images}")
    splits = {"train": order[:train_images], "val": order[54000:]}
    t0 = time.perf_counter()
    for split, (xs, ys, idx) in {"train": (train_x, train_y, splits["train"]), "val": (train_x, train_y, splits["val"]),
                                 "test": (test_x, test_y, np.arange(len(test_x)))}.items():
        for c, name in enumerate(CLASSES):
            (root / split / f"{c}-{name}").mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(xs[i]).save(root / split / f"{ys[i]}-{CLASSES[ys[i]]}" / f"{i}.png")
    done.write_text("")
    print(f"wrote {sum(len(v) for v in splits.values()) + len(test_x)} PNGs under {root} in {time.perf_counter() - t0:.0f} s", flush=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for the images, the model dir and the result.")
    ap.add_argument("--source", type=Path, default=SOURCE, help="Where the idx files are.")
    ap.add_argument("--train-images", type=int, default=54000,
                    help="Train on the first N of the 54,000 training images (a quicker run); the folder is "
                         "fashion-mnist-<N> when N is less.")
    ap.add_argument("--tailor", default=str(Path(sys.executable).parent / "tailor"), help="The tailor command.")
    ap.add_argument("extra", nargs="*", help="More tailor train options (after --).")
    args = ap.parse_args()
    from tailorrt.precision import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    name = "fashion-mnist" if args.train_images == 54000 else f"fashion-mnist-{args.train_images}"
    folder = build_folder(args.source, args.out / name, args.train_images)
    model_dir = args.out / "runs"
    cmd = [args.tailor, "train", "--task", f"imagefolder:{folder}", "--model-dir", str(model_dir), "--backbone",
           "embedded", "--resume", *OPTIONS, *args.extra]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    meta = json.loads((model_dir / "tasks" / name / "task.json").read_text())
    m = meta["metrics"]
    result = {"command": cmd, "seconds": round(seconds, 1), "accuracy": m["accuracy"],
              "teacher_accuracy": m["teacher_accuracy"], "drop": round(m["teacher_accuracy"] - m["accuracy"], 3),
              "universal_blocks": f"{m['universal_blocks_kept']}/{m['universal_blocks_total']}",
              "flops_ratio": round(m["flops"] / m["teacher_flops"], 3), "task_params": m["task_params"],
              "prune": m["prune"], "phases": [(p["name"], p.get("seconds")) for p in meta["training"]["phases"]]}
    (args.out / f"{name}.result.json").write_text(json.dumps(result, indent=1))
    print(f"{name}: test {m['accuracy']:.2f}% (teacher {m['teacher_accuracy']:.2f}%, "
          f"{result['drop']:.2f} points below), {result['universal_blocks']} universal blocks, "
          f"{result['flops_ratio']:.2f}x the teacher's FLOPs, {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
