"""What checking every file against its recorded sha256 costs at load, side by side in one run.

    python benchmarks/runtime.py synthetic --model-dir /tmp/r34 --tasks 6     # a ResNet34-size model dir
    python benchmarks/integrity.py --model-dir /tmp/r34

Each round loads a ``Runtime`` with every task in a fresh process, once as shipped (every file hashed before it
is used) and once with the check switched off for this measurement only, per backend, interleaved; it prints
the median load time of each, the bytes hashed and the hashing rate. Requests never hash anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_PROBE = """
import json, sys, time
from pathlib import Path
backend, verify, model_dir = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
from tailorrt import Runtime
from tailorrt.integrity import FileVerifier
if not verify:
    FileVerifier.verify = lambda self, path, sha256, **_: Path(path)
start = time.perf_counter()
rt = Runtime(model_dir, backend=backend)
seconds = time.perf_counter() - start
hashed = sum(Path(p).stat().st_size for p in rt.model_dir.files._seen)
print(json.dumps({"seconds": seconds, "hashed_bytes": hashed, "tasks": len(rt.tasks)}))
"""


def load(backend: str, verify: bool, model_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, backend, "1" if verify else "0", model_dir],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/r34")
    ap.add_argument("--backends", default="onnx,torch")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"load of every task of {args.model_dir}, fresh process per load, median of {args.rounds} interleaved rounds")
    print("| backend | tasks | bytes hashed | load, files checked | load, check off | cost | hashing rate |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        on, off = [], []
        for _ in range(args.rounds):
            on.append(load(backend, True, args.model_dir))
            off.append(load(backend, False, args.model_dir))
        t_on = statistics.median(r["seconds"] for r in on)
        t_off = statistics.median(r["seconds"] for r in off)
        hashed = on[0]["hashed_bytes"]
        cost = t_on - t_off
        rate = f"{hashed / cost / 1e9:.2f} GB/s" if cost > 0 else "-"
        print(f"| {backend} | {on[0]['tasks']} | {hashed / 1e6:.1f} MB | {t_on:.2f} s | {t_off:.2f} s | "
              f"+{cost:.2f} s ({100 * cost / t_off:.0f}%) | {rate} |", flush=True)


if __name__ == "__main__":
    main()
