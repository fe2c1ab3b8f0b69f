"""What both halves of ``tailor export`` (ONNX and TensorRT) use: the request, the tasks being exported,
the staging folders, carrying over the previous export's tasks, and the side-by-side timing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from tailorrt.errors import ConfigError, PackError
from tailorrt.export import speed
from tailorrt.io import sha256_file, staging_dir
from tailorrt.onnx_graph import INPUT, LOGITS
from tailorrt.pack import ModelDir, preprocess_of

MANIFEST = "export.json"
TIMING_CACHE = "timing.cache"
FP32_TOLERANCE = 1e-4
TRT_TOLERANCE = {False: 1e-3, True: 0.1}  # max |logit difference| against ONNX Runtime, fp32 / fp16
TRT_MIN_AGREEMENT = {False: 0.999, True: 0.98}
Report = Callable[[str], None]


@dataclass
class ExportRequest:
    """What ``tailor export`` does."""

    model_dir: str = "runs"
    tasks: list[str] | None = None  # None: every task in the model dir
    trt: bool = False
    fp16: bool = False
    max_batch: int = 32
    data_dir: str = "data"
    download: bool = True
    parity_images: int = 256
    tolerance: float = FP32_TOLERANCE
    bench: bool = False

    def validate(self) -> None:
        if self.fp16 and not self.trt:
            raise ConfigError("--fp16 applies to TensorRT engines; add --trt")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1, not {self.max_batch}")
        if self.parity_images < 1:
            raise ConfigError(f"--parity-images must be at least 1, not {self.parity_images}")


@dataclass
class TaskNetwork:
    """A task ready to export: its PyTorch module, metadata, and parity images."""

    name: str
    meta: dict
    module: nn.Module
    images: np.ndarray

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = preprocess_of(self.meta).size
        return (3, size, size)


def export_staging(mdir: ModelDir, kind: str) -> Path:
    """Where ``onnx/`` or ``trt/`` is assembled; the pid in the name lets a later export remove it if killed."""
    return staging_dir(mdir.root / ".work", f"export-{kind}-{os.getpid()}-")


def previous_export(mdir: ModelDir, kind: str, report: Report) -> dict | None:
    """The manifest of the export being replaced; one that cannot be read is reported and nothing is carried over."""
    try:
        return mdir.export_manifest(kind)
    except PackError as e:
        report(f"the previous {kind} export is not used: {e}")
        return None


def carry_over(prev: dict | None, folder: Path, tmp: Path, skip: set[str], same: Callable[[dict], bool],
               report: Report) -> dict[str, dict]:
    """Copy the previous export's entries (and files) for tasks not being re-exported."""
    if prev is None:
        return {}
    kept = {}
    for name, entry in prev.get("tasks", {}).items():
        if name in skip:
            continue
        src = folder / entry["file"]
        if not same(prev) or not src.is_file() or sha256_file(src) != entry["sha256"]:
            report(f"dropped {name} from the previous export (out of date or damaged); re-export it")
            continue
        shutil.copy2(src, tmp / entry["file"])
        kept[name] = entry
    return kept


@torch.inference_mode()
def torch_logits(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return module(torch.from_numpy(x)).numpy()


def bench_task(net: TaskNetwork, session: ort.InferenceSession, batches: tuple[int, ...] = (1, 32),
               extra: dict[str, Callable[[np.ndarray], object]] | None = None) -> dict:
    """Images/s of PyTorch eager and ONNX Runtime (and ``extra`` runners) on the same images, side by side."""
    out = {"threads": {"torch": torch.get_num_threads(),
                       "onnxruntime": session.get_session_options().intra_op_num_threads}}
    for b in batches:
        x = np.resize(net.images, (b, *net.images.shape[1:])).astype(np.float32)
        xt = torch.from_numpy(x)

        def eager() -> object:
            with torch.inference_mode():
                return net.module(xt)

        fns = {"pytorch": eager, "onnxruntime": lambda: session.run([LOGITS], {INPUT: x})}
        for name, fn in (extra or {}).items():
            fns[name] = lambda fn=fn: fn(x)
        res = speed.time_side_by_side(fns, batch=b)
        res["onnxruntime_vs_pytorch"] = round(res["pytorch"]["ms_per_batch"] / res["onnxruntime"]["ms_per_batch"], 3)
        out[f"batch_{b}"] = res
    return out
