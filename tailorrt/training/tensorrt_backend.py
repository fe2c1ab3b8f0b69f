"""The TensorRT backend of :class:`tailorrt.Runtime`, registered as the entry point ``tensorrt`` of
``tailorrt.backends``: one engine per task from ``tailor export --trt`` (each engine holds its own weights)."""

from __future__ import annotations

import numpy as np

from tailorrt.backends import current_export, export_entry, not_loaded
from tailorrt.kinds.tensorrt import TENSORRT
from tailorrt.pack import ModelDir
from tailorrt.training.trt_runner import EngineRunner, require_tensorrt


class TensorRTBackend:
    """One TensorRT engine per task, from ``tailor export --trt``."""

    name = "tensorrt"

    def __init__(self, mdir: ModelDir, device: str, threads: int | None = None, *, share_weights: bool = True,
                 precision: str = "fp32") -> None:
        """Only ``mdir`` is read: the engines were built for their GPU, at the export's precision."""
        self.trt = require_tensorrt()
        manifest = current_export(mdir, TENSORRT.folder)
        self.mdir, self.manifest, self.max_batch = mdir, manifest, int(manifest.max_batch)
        self.runners: dict[str, object] = {}

    def add(self, *tasks: str) -> None:
        for task in tasks:
            entry = export_entry(self.mdir, TENSORRT.folder, self.manifest, task)
            self.runners[task] = EngineRunner(self.trt, self.mdir.export_file(TENSORRT.folder, entry.file).read_bytes())

    def remove(self, task: str) -> None:
        self.runners.pop(task, None)

    def logits(self, task: str, x: np.ndarray) -> np.ndarray:
        runner = self.runners.get(task)
        if runner is None:
            raise not_loaded(task)
        return runner.logits(x)
