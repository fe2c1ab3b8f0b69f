"""Execution backends of :class:`tailorrt.Runtime`. Each loads the universal weights once and adds or
removes tasks while running; ``logits(task, x)`` takes a preprocessed ``[N,3,S,S]`` float32 batch.

- ``torch``: one backbone module; every task's student shares its Parameter objects.
- ``onnx``: one ONNX Runtime session over the merged graph of all loaded tasks, at full optimisation
  with the conv-affine fusions disabled (they would copy the shared conv weights per task). Inside
  the session every task's branch uses the one (re-laid) copy of each universal weight; adding or
  removing a task builds a new session from the export folder and swaps it in (design.md section 9).
  Measured in ``benchmarks/runtime.py``: handing the session memory-mapped OrtValues instead
  (``add_external_initializers``) cost more per task than letting ONNX Runtime read the file.
- ``tensorrt``: one engine per task from ``<model-dir>/trt`` (the engine holds its own weights).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from tailorrt.errors import ConfigError, DependencyMissingError, PackError
from tailorrt.pack import ModelDir, pack_file

DISABLED_FUSIONS = ["ConvBNFusion", "ConvAddFusion", "ConvMulFusion"]
BACKENDS = ("torch", "onnx", "tensorrt")


class Backend(Protocol):
    name: str
    max_batch: int

    def add(self, *tasks: str) -> None: ...

    def remove(self, task: str) -> None: ...

    def logits(self, task: str, x: np.ndarray) -> np.ndarray: ...


def make_backend(name: str, mdir: ModelDir, device: str, threads: int | None = None) -> Backend:
    if name == "torch":
        return TorchBackend(mdir, device)
    if name == "onnx":
        return OnnxBackend(mdir, device, threads)
    if name == "tensorrt":
        return TensorRTBackend(mdir, device)
    raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


class TorchBackend:
    """PyTorch eager: the backbone is loaded once, students share its weights."""

    name = "torch"
    max_batch = 256

    def __init__(self, mdir: ModelDir, device: str) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DependencyMissingError("device cuda was asked for but PyTorch sees no CUDA GPU; use device cpu")
        self.mdir, self.device = mdir, torch.device(device)
        self.backbone, self.meta = mdir.load_backbone()
        self.backbone.to(self.device)
        self.models: dict[str, torch.nn.Module] = {}

    def add(self, *tasks: str) -> None:
        for task in tasks:
            student, _ = self.mdir.load_student(task, self.backbone, self.meta["sha256"])
            self.models[task] = student.to(self.device).eval()

    def remove(self, task: str) -> None:
        self.models.pop(task, None)

    @torch.inference_mode()
    def logits(self, task: str, x: np.ndarray) -> np.ndarray:
        return self.models[task](torch.from_numpy(x).to(self.device)).float().cpu().numpy()


class OnnxBackend:
    """One ONNX Runtime session over every loaded task's graph, sharing one copy of the universal weights."""

    name = "onnx"
    max_batch = 256

    def __init__(self, mdir: ModelDir, device: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DependencyMissingError("the onnx backend on cuda needs onnxruntime-gpu: "
                                             "pip install 'tailorrt[gpu]'")
            self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.mdir, self.threads = mdir, threads or torch.get_num_threads()
        manifest = mdir.export_manifest("onnx")
        if manifest is None:
            raise PackError(f"no ONNX export in {mdir.root}; run: tailor export --model-dir {mdir.root}")
        if manifest["backbone"]["sha256"] != mdir.backbone_meta()["sha256"]:
            raise PackError(f"{mdir.export_dir('onnx')} was exported from another backbone; run tailor export again")
        self.manifest = manifest
        self.folder = mdir.export_dir("onnx")
        self.graphs: dict[str, Path] = {}  # task -> its graph file (protos are not kept in memory)
        self.session = None
        self._lock = threading.Lock()

    def add(self, *tasks: str) -> None:
        """Add tasks; one new session is built for all of them."""
        new = {}
        for task in tasks:
            entry = self.manifest["tasks"].get(task)
            if entry is None:
                raise PackError(f"task {task!r} is not in the ONNX export; run: tailor export --tasks {task}")
            pack_sha = pack_file(self.mdir.task_meta(task))["sha256"]
            if entry.get("pack_sha256") != pack_sha:
                raise PackError(f"the ONNX export of {task!r} is older than its task pack; "
                                f"run: tailor export --tasks {task}")
            new[task] = self.folder / entry["file"]
        with self._lock:
            self._build({**self.graphs, **new})

    def remove(self, task: str) -> None:
        with self._lock:
            graphs = {t: g for t, g in self.graphs.items() if t != task}
            self._build(graphs)

    def _build(self, graphs: dict) -> None:
        from tailorrt.export.merge import merge_graphs

        if not graphs:
            self.graphs, self.session = {}, None
            release_freed_memory()
            return
        import onnx

        merged = merge_graphs({t: onnx.load(str(f), load_external_data=False) for t, f in graphs.items()})
        model = merged.SerializeToString()
        del merged  # the protos hold every task's private weights: drop them before the session copies its own
        opts = self.ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # the merged graph never touches disk: its shared initializers are read from the export folder
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.folder))
        session = self.ort.InferenceSession(model, opts, providers=self.providers,
                                            disabled_optimizers=DISABLED_FUSIONS)
        del model
        self.graphs, self.session = graphs, session  # swapped in whole; running calls keep the old one
        release_freed_memory()

    def logits(self, task: str, x: np.ndarray) -> np.ndarray:
        from tailorrt.export.merge import io_name

        session, graphs = self.session, self.graphs
        if session is None or task not in graphs:
            raise PackError(f"task {task!r} is not loaded")
        empty = np.zeros((0, *x.shape[1:]), np.float32)
        feed = {io_name(t, "input"): empty for t in graphs}
        feed[io_name(task, "input")] = np.ascontiguousarray(x, dtype=np.float32)
        return session.run([io_name(task, "logits")], feed)[0]


def release_freed_memory() -> None:
    """Hand memory freed by a replaced session back to the OS (glibc keeps it otherwise)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


class TensorRTBackend:
    """One TensorRT engine per task, from ``tailor export --trt``."""

    name = "tensorrt"

    def __init__(self, mdir: ModelDir, device: str) -> None:
        from tailorrt.export.tensorrt_engines import require_tensorrt

        self.trt = require_tensorrt()
        manifest = mdir.export_manifest("trt")
        if manifest is None:
            raise PackError(f"no TensorRT engines in {mdir.root}; run: tailor export --trt --model-dir {mdir.root}")
        self.mdir, self.manifest, self.max_batch = mdir, manifest, int(manifest["max_batch"])
        self.runners: dict[str, object] = {}

    def add(self, *tasks: str) -> None:
        from tailorrt.export.tensorrt_engines import EngineRunner

        for task in tasks:
            entry = self.manifest["tasks"].get(task)
            if entry is None:
                raise PackError(f"task {task!r} has no TensorRT engine; run: tailor export --trt --tasks {task}")
            self.runners[task] = EngineRunner(self.trt, (self.mdir.export_dir("trt") / entry["file"]).read_bytes())

    def remove(self, task: str) -> None:
        self.runners.pop(task, None)

    def logits(self, task: str, x: np.ndarray) -> np.ndarray:
        return self.runners[task].logits(x)
