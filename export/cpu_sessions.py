"""ONNX Runtime sessions on the CPU, configured the same way for parity checks and timings."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch


def cpu_session(path: Path, *, threads: int | None = None, spinning: bool = False) -> ort.InferenceSession:
    """A CPU session at the default (full) optimisation level, with as many threads as PyTorch uses.

    Spinning is off by default: idle ONNX Runtime threads would otherwise busy-wait on the cores that
    PyTorch uses next in a side-by-side timing, and make PyTorch look slower than it is.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
