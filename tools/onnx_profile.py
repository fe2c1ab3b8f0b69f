"""Where a graph's time goes in ONNX Runtime: mean microseconds per call by operator type, from ORT's profiler."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tailorrt.onnx_weight_store import DISABLED_FUSIONS, session_model, session_options


def op_profile(graph: Path, x: np.ndarray, *, threads: int, fuse: bool, calls: int = 300, warmup: int = 30) -> dict:
    """Profile ``calls`` runs of ``graph`` on ``x`` after ``warmup`` unprofiled-in-the-result runs.

    ``fuse`` False is how tailorrt's shared-weight sessions are optimised (conv-affine fusions off, so each
    task keeps its own batch norms); True is ONNX Runtime's full default, as a stand-alone model gets.
    Returns ``{"call_us": mean run time, "kernel_us": {op type: mean time per call}, "nodes": {op type: count}}``.
    """
    with tempfile.TemporaryDirectory(prefix="tailorrt-profile-") as tmp:
        opts = session_options(threads, graph.parent)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(session_model(graph, fuse=fuse), opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=[] if fuse else DISABLED_FUSIONS)
        name = sess.get_inputs()[0].name
        for _ in range(warmup + calls):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs[warmup]["ts"] if len(runs) > warmup else 0
    measured = [e for e in runs if e["ts"] >= start]
    kernel: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"]["op_name"]
            kernel[op] += e["dur"]
            nodes[op].add(e["name"])
    n = max(len(measured), 1)
    return {"call_us": round(sum(e["dur"] for e in measured) / n, 1),
            "kernel_us": {op: round(us / n, 1) for op, us in sorted(kernel.items(), key=lambda kv: -kv[1])},
            "nodes": {op: len(v) for op, v in nodes.items()}}
