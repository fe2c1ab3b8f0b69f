"""One NetTailor student training step with one-pass and with layer-local distillation, side by side.

    python benchmarks/distill_step.py            # embedded backbone, batch 64, 32 px

Times forward + backward of the student's loss terms (logits and every layer output) for ``forward_all(x)`` and
``forward_all(x, local=True)``, interleaved over rounds, and prints the median of each and their ratio, with the
CPU's flags. A third row recomputes every layer whole on detached inputs (what ``local`` computed before the
universal block's output and the proxies' max-pools were reused): the same targets, more work.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tailorrt.cpu import cpu_summary
from tailorrt.training.backbones import build_backbone, pool
from tailorrt.training.methods.parts.student import Student


def recompute_whole(s: Student, x: torch.Tensor):
    """Layer-local targets by running each layer again on detached inputs."""
    outs, targets = [s.stem(x)], []
    targets.append(outs[0])
    for layer in s.layers:
        recent = outs[::-1][: len(layer.proxies) + 1]
        outs.append(layer(recent))
        targets.append(layer([r.detach() for r in recent]))
    return s.classifier(pool(s.head_norm(outs[-1]))), targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="Steps per round and variant.")
    args = ap.parse_args()
    torch.manual_seed(0)
    backbone, _ = build_backbone("embedded")
    backbone.eval()
    student = Student(backbone, 10).train()
    x = torch.randn(args.batch, 3, backbone.spec.input_size, backbone.spec.input_size)
    variants = {"one pass": lambda: student.forward_all(x), "layer-local": lambda: student.forward_all(x, local=True),
                "layer-local, whole layers again": lambda: recompute_whole(student, x)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, forward in variants.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                logits, outs = forward()
                loss = logits.square().mean() + sum(o.square().mean() for o in outs[1:] if o is not None)
                student.zero_grad(set_to_none=True)
                loss.backward()
            times[name].append((time.perf_counter() - t0) / args.steps)
    print(f"CPU: {cpu_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    base = statistics.median(times["one pass"])
    for name, ts in times.items():
        print(f"{name:32s} {statistics.median(ts) * 1e3:7.1f} ms per step  {statistics.median(ts) / base:.2f}x")


if __name__ == "__main__":
    main()
