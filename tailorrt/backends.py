"""Execution backends of :class:`tailorrt.Runtime`. Each loads the universal weights once and adds or
removes tasks while running; ``logits(task, x)`` takes a preprocessed ``[N,3,S,S]`` float32 batch.

- ``onnx``: one ONNX Runtime session per task, optimised at full level with the conv-affine fusions
  off; every session reads the one copy of the universal weights as ONNX Runtime re-lays them for this
  CPU (:mod:`tailorrt.onnx_weight_store`). Adding or removing a task touches no other task's session.

The torch backend (one backbone module; every task's student shares its Parameter objects) and the TensorRT one
(one engine per task from ``<model-dir>/trt``) are the training side's: :mod:`tailorrt.training.torch_backend` and
:mod:`tailorrt.training.tensorrt_backend`. Every backend is registered by name as an entry point of the group
``tailorrt.backends`` (``pyproject.toml``) and constructed as ``Backend(mdir, device, threads, share_weights=,
precision=)``.
"""

from __future__ import annotations

import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

import numpy as np

from tailorrt import kinds
from tailorrt.errors import ConfigError, DependencyMissingError, PackError, UnknownTaskError
from tailorrt.extras import require_training
from tailorrt.pack import ModelDir
from tailorrt.records import ExportEntry, ExportRecord

GROUP = "tailorrt.backends"  # the entry points that name the backends (pyproject.toml)
INT8_CHECK_TOLERANCE = 0.02  # of the largest stored logit: the same int8 arithmetic agrees far closer


class Backend(Protocol):
    name: str
    max_batch: int

    def add(self, *tasks: str) -> None: ...

    def remove(self, task: str) -> None: ...

    def logits(self, task: str, x: np.ndarray) -> np.ndarray: ...


def make_backend(name: str, mdir: ModelDir, device: str, threads: int | None = None, *,
                 share_weights: bool = True, precision: str = "fp32", weights_dir: Path | None = None) -> Backend:
    """The backend ``name`` at ``precision`` (checked by :func:`tailorrt.precision.check_precision` first), found by
    name among the entry points of ``tailorrt.backends``: the onnx backend is this module's, the torch and TensorRT
    backends are the training side's (``tailorrt/training/``), which a serving install cannot load."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(sorted(found))}")
    try:
        factory = found[name].load()
    except ImportError:
        require_training(f"the {name} backend", instead="or serve the ONNX export: --backend onnx")
        raise
    if weights_dir is None:
        return factory(mdir, device, threads, share_weights=share_weights, precision=precision)
    if name != OnnxBackend.name:
        raise ConfigError(f"weights mapped from files (weights_dir, tailor serve --workers) need the onnx backend, "
                          f"not {name}")
    return OnnxBackend(mdir, device, threads, share_weights=share_weights, precision=precision,
                       weights_dir=weights_dir)


class OnnxBackend:
    """One ONNX Runtime session per task, all reading one copy of the universal weights (see
    :mod:`tailorrt.onnx_weight_store`); at int8, the graphs of ``onnx-int8/`` and one copy of its int8 weights."""

    name = "onnx"
    max_batch = 256

    def __init__(self, mdir: ModelDir, device: str, threads: int | None = None, *, share_weights: bool = True,
                 precision: str = "fp32", weights_dir: Path | None = None) -> None:
        """``weights_dir``: the universal weights as ONNX Runtime lays them out are written there once and mapped
        read-only, so that processes using the same folder share one physical copy (see :class:`WeightStore`)."""
        import onnxruntime as ort

        from tailorrt.cpu import cpu_threads
        from tailorrt.onnx_weight_store import WeightStore

        self.providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DependencyMissingError("the onnx backend on cuda needs onnxruntime-gpu: "
                                             "pip install 'tailorrt[gpu]'")
            self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.mdir, self.threads = mdir, threads or cpu_threads()
        self.kind = kinds.for_precision(precision)
        self.manifest = current_export(mdir, self.kind.folder)
        self.store, self.share_weights = WeightStore(weights_dir), share_weights
        self.sessions: dict = {}  # task -> TaskSession; replaced whole, so running calls keep what they read
        self._lock = threading.Lock()

    def graph_file(self, task: str) -> Path:
        """The task's graph, checked against the export's sha256s, with the shared weights it reads beside it."""
        entry = export_entry(self.mdir, self.kind.folder, self.manifest, task)
        self.mdir.export_file(self.kind.folder, self.manifest.shared)
        return self.mdir.export_file(self.kind.folder, entry.file)

    def add(self, *tasks: str) -> None:
        """Build a session for each task; the ones already loaded are not touched."""
        from tailorrt.onnx_weight_store import task_session

        graphs = {task: self.graph_file(task) for task in tasks}
        with self._lock:
            built = {}
            try:
                for task, graph in graphs.items():
                    built[task] = task_session(task, graph, self.store, threads=self.threads,
                                               providers=self.providers, fuse=not self.share_weights,
                                               prepack=self.kind.prepacks_shared or not self.share_weights)
                    if self.kind.checks_on_load:
                        self.check_stored(task, built[task])
            except BaseException:  # the new tasks (the failing one included) may have stored tensors already
                for task in graphs:
                    if task not in self.sessions:
                        self.store.release(task)
                raise
            self.sessions = {**self.sessions, **built}
        release_freed_memory()

    def check_stored(self, task: str, session) -> None:
        """Re-run the images stored at export and refuse a task whose int8 logits differ here: int8 kernels
        differ between CPUs (VNNI or not), and a wrong answer must not be served."""
        from safetensors.numpy import load_file

        from tailorrt.cpu import cpu_summary

        entry = self.manifest.tasks[task]
        stored = load_file(str(self.mdir.export_file(self.kind.folder, entry.check)))
        got = session.run(stored["input"])
        diff = float(np.abs(got - stored["logits"]).max())
        if not diff <= INT8_CHECK_TOLERANCE * max(1.0, float(np.abs(stored["logits"]).max())):
            raise PackError(f"task {task!r}: {self.kind.precision} logits on this CPU ({cpu_summary()}) differ by "
                            f"{diff:.3g} from those of the export ({self.manifest.cpu or 'unknown CPU'}); export "
                            f"it again here (tailor export{self.kind.flag} --tasks {task}) or serve it at "
                            f"{kinds.DEFAULT_PRECISION}")

    def remove(self, task: str) -> None:
        with self._lock:
            self.sessions = {t: s for t, s in self.sessions.items() if t != task}
            self.store.release(task)
        release_freed_memory()

    def logits(self, task: str, x: np.ndarray) -> np.ndarray:
        session = self.sessions.get(task)
        if session is None:
            raise not_loaded(task)
        return session.run(np.ascontiguousarray(x, dtype=np.float32))


def not_loaded(task: str) -> UnknownTaskError:
    """The error of a call for a task that is not (or no longer) loaded."""
    return UnknownTaskError(f"task {task!r} is not loaded")


def current_export(mdir: ModelDir, kind: str) -> ExportRecord:
    """The manifest of an export (a folder of :mod:`tailorrt.kinds`), refusing a missing one or one made
    from another backbone."""
    manifest = mdir.export_record(kind)
    flag = kinds.get(kind).flag
    if manifest is None:
        raise PackError(f"no {kind} export in {mdir.root}; run: tailor export{flag} --model-dir {mdir.root}")
    if manifest.backbone_sha256 != mdir.backbone_record().sha256:
        raise PackError(f"{mdir.export_dir(kind)} was exported from another backbone; run tailor export{flag} again")
    return manifest


def export_entry(mdir: ModelDir, kind: str, manifest: ExportRecord, task: str) -> ExportEntry:
    """A task's entry in an export record, refusing a task that is absent or exported before its pack changed."""
    flag = kinds.get(kind).flag
    entry = manifest.tasks.get(task)
    if entry is None:
        raise PackError(f"task {task!r} is not in the {kind} export; run: tailor export{flag} --tasks {task}")
    if entry.pack_sha256 != mdir.task_record(task).pack.sha256:
        raise PackError(f"the {kind} export of {task!r} is older than its task pack; "
                        f"run: tailor export{flag} --tasks {task}")
    return entry


def release_freed_memory() -> None:
    """Hand memory freed by a replaced session back to the OS (glibc keeps it otherwise)."""
    import gc

    from tailorrt.heap import trim_heap

    gc.collect()
    trim_heap()
