"""Which backbone to deploy: images/s of each one's per-task model (the whole network fine-tuned for a 10-class task,
one plain ONNX Runtime session, tailorrt's own graph) at its own input size, timed side by side in one run.

    python benchmarks/backbone_speed.py                                   # efficientnet-lite0, resnet18, resnet50
    python benchmarks/backbone_speed.py --backbones efficientnet-lite0,efficientnet-lite2,resnet34 --batches 1,8,32

Weights are random (timings do not depend on them); every session has the same threads (the Runtime's). Each
batch size is one interleaved run (median of the rounds), and each backbone's speed is given against the first
one's as the median of the per-round ratios, with their quartiles.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="efficientnet-lite0,resnet18,resnet50", help="Comma-separated backbones.")
    ap.add_argument("--batches", default="1,32", help="Batch sizes.")
    ap.add_argument("--rounds", type=int, default=9, help="Interleaved rounds per batch size.")
    ap.add_argument("--threads", type=int, help="Threads of every session (default: torch's).")
    ap.add_argument("--out", type=Path, help="Also write the figures as JSON here.")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from tailorrt.cpu import cpu_summary
    from tailorrt.export.speed import paired_ratio, time_side_by_side
    from tailorrt.onnx_weight_store import session_options
    from tailorrt.tools.bench import reference_graph
    from tailorrt.training.backbones import UniversalBackbone, get_spec

    threads = args.threads or torch.get_num_threads()
    names = args.backbones.split(",")
    print(f"CPU: {cpu_summary()}; {threads} threads; onnxruntime {ort.__version__}", flush=True)
    sessions, flops, sizes = {}, {}, {}
    for name in names:
        torch.manual_seed(0)
        backbone = UniversalBackbone(get_spec(name)).eval()
        model, flops[name] = reference_graph(backbone, 10, name)
        sizes[name] = backbone.spec.input_size
        sessions[name] = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                              providers=["CPUExecutionProvider"])
    result = {"cpu": cpu_summary(), "threads": threads, "flops": flops, "input_size": sizes, "batches": {}}
    first = names[0]
    print(f"| backbone | input | GFLOPs | batch | images/s | vs {first} (quartiles) | GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for b in (int(v) for v in args.batches.split(",")):
        inputs = {n: np.random.default_rng(0).standard_normal((b, 3, sizes[n], sizes[n])).astype(np.float32)
                  for n in names}
        runs = {n: (lambda s=sessions[n], x=inputs[n]: s.run(["logits"], {"input": x})) for n in names}
        res = time_side_by_side(runs, batch=b, rounds=args.rounds)
        result["batches"][str(b)] = res
        for n in names:
            r = paired_ratio(res, n, first)
            ips = res[n]["images_per_s"]
            print(f"| {n} | {sizes[n]} px | {flops[n] / 1e9:.2f} | {b} | {ips:.1f} | {r['median']:.2f}x "
                  f"({r['q1']:.2f}-{r['q3']:.2f}) | {ips * flops[n] / 1e9:.0f} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
