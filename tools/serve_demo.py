"""The end of ``make demo``: start ``tailor serve`` on loopback, send a few test images of every built-in
task through HTTP (KServe v2 infer with the PNGs as binary tensor data, and the classification extension
answering in binary too), print the answers next to the truth, and stop the server. The test images come from
the built-in world (the training side's); :func:`request_plan` mixes them into a load for the benchmarks.

    python -m tailorrt.tools.serve_demo --model-dir runs/demo --per-task 4
"""

from __future__ import annotations

import argparse
import json
import random
import urllib.request

from rich.console import Console
from rich.table import Table

from tailorrt import Runtime
from tailorrt.pack import ModelDir
from tailorrt.serving.local import local_server, png_bytes
from tailorrt.serving.protocol import pack_bytes, unpack_bytes
from tailorrt.training.world import BUILTIN_TASKS, generate


def infer(url: str, task: str, pngs: list[bytes], top_k: int = 1) -> list[tuple[str, float]]:
    """(label, score) per image through ``POST /v2/models/{task}/infer``, as ``tritonclient.http`` sends it: a
    JSON header, then the images as one binary BYTES tensor; the answer is binary too."""
    data = pack_bytes(pngs)
    header = json.dumps({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(pngs)],
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": top_k, "binary_data": True}}]}).encode()
    req = urllib.request.Request(f"{url}/v2/models/{task}/infer", data=header + data,
                                 headers={"Inference-Header-Content-Length": str(len(header)),
                                          "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as r:
        n = int(r.headers["Inference-Header-Content-Length"])
        body = r.read()
    out = json.loads(body[:n])["outputs"][0]
    rows = unpack_bytes(body[n:], out["shape"][0] * out["shape"][1])[::out["shape"][1]]
    return [(row.decode().split(":", 2)[2], float(row.decode().split(":", 2)[0])) for row in rows]


def request_plan(runtime: Runtime, tasks: list[str], requests: int, images_per_task: int = 100, seed: int = 0
                 ) -> list[tuple[str, bytes, str, float]]:
    """``requests`` test images of built-in ``tasks``, mixed at random, as PNG with the answer ``runtime`` gives."""
    pool = []
    for t in tasks:
        images, _ = generate(BUILTIN_TASKS[t], "test", runtime.task(t).preprocess.size)
        pngs = [png_bytes(a) for a in images[:images_per_task]]
        pool += [(t, png, p.label, p.scores[0]) for png, p in zip(pngs, runtime.predict(t, pngs))]
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(requests)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="runs/demo")
    ap.add_argument("--per-task", type=int, default=4)
    ap.add_argument("--backend", default="onnx")
    args = ap.parse_args()
    console = Console()
    tasks = [t for t in ModelDir(args.model_dir).task_names() if t in BUILTIN_TASKS]
    table = Table("task", "image", "truth", "answer", "score", "",
                  title="answers through HTTP (KServe v2 infer, binary tensor data)")
    right = total = 0
    with local_server(args.model_dir, "--backend", args.backend) as url:
        console.print(f"tailor serve is up on {url} with {', '.join(tasks)}", highlight=False)
        for task in tasks:
            spec = BUILTIN_TASKS[task]
            size = ModelDir(args.model_dir).task_record(task).preprocess.size
            images, labels = generate(spec, "test", size)
            pngs = [png_bytes(a) for a in images[: args.per_task]]
            for i, ((label, score), truth) in enumerate(zip(infer(url, task, pngs), labels)):
                ok = label == spec.classes[int(truth)]
                right, total = right + ok, total + 1
                table.add_row(task, f"test #{i}", spec.classes[int(truth)], label, f"{score:.3f}",
                              "[green]ok[/green]" if ok else "[red]wrong[/red]")
    console.print(table)
    console.print(f"{right}/{total} right; the server was stopped", highlight=False)


if __name__ == "__main__":
    main()
