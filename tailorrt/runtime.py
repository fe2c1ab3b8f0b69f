"""``Runtime``: many tasks in one process over one copy of the backbone.

```python
from tailorrt import Runtime

rt = Runtime("runs/demo", backend="onnx")            # every task in the model dir
rt.predict("synth-digits", "digit.png", top_k=3)     # -> Prediction(labels, indices, scores)
rt.add_task("synth-glyphs"); rt.remove_task("synth-signs")
```
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailorrt.backends import make_backend
from tailorrt.errors import ConfigError, UnknownTaskError
from tailorrt.images import DecodeBudget, is_batch, to_batch
from tailorrt.limits import Limits
from tailorrt.pack import ModelDir
from tailorrt.precision import check_precision
from tailorrt.preprocess import Preprocess
from tailorrt.records import TaskRecord


@dataclass
class Prediction:
    """Top-k answer for one image: class names, class indices and probabilities, best first."""

    labels: list[str]
    indices: list[int]
    scores: list[float]

    @property
    def label(self) -> str:
        return self.labels[0]


@dataclass
class TaskInfo:
    """A loaded task: its classes, preprocessing and on-disk sizes."""

    name: str
    classes: list[str]
    preprocess: Preprocess
    method: str
    pack_bytes: int
    record: TaskRecord = field(repr=False)

    def to_json(self) -> dict:
        return {"name": self.name, "classes": self.classes, "method": self.method, "pack_bytes": self.pack_bytes,
                "input_size": self.preprocess.size, "preprocess": self.preprocess.to_json()}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Runtime:
    """Loads the backbone once, then any number of task packs; predicts with each task's preprocessing."""

    def __init__(self, model_dir: str | Path = "runs", tasks: list[str] | None = None, backend: str = "torch",
                 device: str = "cpu", *, threads: int | None = None, limits: Limits = Limits(),
                 share_weights: bool = True, precision: str = "fp32", weights_dir: str | Path | None = None) -> None:
        """``share_weights=False`` (onnx backend) fuses each task's batch norms into its own copy of the universal
        conv weights: a little faster on small inputs, about one backbone of memory per task.

        ``precision``: ``fp32``, ``int8`` (onnx backend, after ``tailor export --precision int8``) or ``bf16``
        (torch backend, after ``tailor export --precision bf16``, on a CPU with bf16 instructions or a GPU). At int8,
        ``share_weights=False`` lets each task's session pre-pack its own copy of its int8 weights (faster kernels,
        about the task's int8 weights of memory per task); by default all tasks read one copy as stored.

        ``weights_dir`` (onnx backend on CPU): a folder where the universal weights, as ONNX Runtime lays them out
        for this CPU, are written once and mapped read-only; processes given the same folder (the workers of
        ``tailor serve --workers N``, or an app's own) hold one physical copy between them."""
        check_precision(precision, backend, device)
        self.precision = precision
        self.model_dir = ModelDir(model_dir)
        self.limits, self.device = limits, device
        self.decode_budget = DecodeBudget(limits.max_decode_bytes, limits.decode_wait_s)  # shared by all callers
        self.backbone_record = self.model_dir.backbone_record()
        self.backend = make_backend(backend, self.model_dir, device, threads, share_weights=share_weights,
                                    precision=precision, weights_dir=Path(weights_dir) if weights_dir else None)
        self._tasks: dict[str, TaskInfo] = {}
        self._lock = threading.Lock()
        names = tasks if tasks is not None else self.model_dir.task_names()
        if names:
            self.add_tasks(names)

    @property
    def tasks(self) -> list[str]:
        return sorted(self._tasks)

    def task(self, name: str) -> TaskInfo:
        info = self._tasks.get(name)
        if info is None:
            raise UnknownTaskError(f"task {name!r} is not loaded (loaded: {', '.join(self.tasks) or 'none'})")
        return info

    def add_task(self, name: str) -> TaskInfo:
        """Load a task pack next to the others (the backbone is not reloaded)."""
        return self.add_tasks([name])[0]

    def add_tasks(self, names: list[str]) -> list[TaskInfo]:
        """Load several task packs at once (the ONNX backend builds one session for all of them)."""
        with self._lock:
            infos = [self.describe(name) for name in dict.fromkeys(names)]
            self.backend.add(*[i.name for i in infos])
            self._tasks.update({i.name: i for i in infos})
            return infos

    def describe(self, name: str) -> TaskInfo:
        """A task of the model directory as it would load (its pack checked against the backbone), not loaded."""
        rec = self.model_dir.task_record_for(name, self.backbone_record.sha256)
        return TaskInfo(name, list(rec.classes), rec.preprocess, rec.method, rec.pack.bytes, rec)

    def remove_task(self, name: str) -> None:
        with self._lock:
            self.task(name)
            self.backend.remove(name)
            del self._tasks[name]

    def preprocess(self, task: str, images: Any) -> np.ndarray:
        """Images of any accepted kind as the task's ``[N,3,S,S]`` float32 input (decodes within ``limits``)."""
        return to_batch(images, self.task(task).preprocess, self.limits, self.decode_budget)

    def logits(self, task: str, batch: np.ndarray) -> np.ndarray:
        """Logits of a preprocessed batch, run in chunks of the backend's largest batch."""
        self.task(task)
        step = self.backend.max_batch
        parts = [self.backend.logits(task, batch[i:i + step]) for i in range(0, len(batch), step)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def predict(self, task: str, images: Any, top_k: int = 1) -> Prediction | list[Prediction]:
        """Top-k predictions: one :class:`Prediction` for one image, a list for a batch."""
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1, not {top_k}")
        preds = self.decode(task, self.logits(task, self.preprocess(task, images)), top_k)
        return preds if is_batch(images) else preds[0]

    def decode(self, task: str, logits: np.ndarray, top_k: int = 1) -> list[Prediction]:
        """Top-k class names, indices and probabilities from logits."""
        classes = self.task(task).classes
        probs = softmax(logits.astype(np.float64))
        k = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [Prediction([classes[i] for i in row], [int(i) for i in row], [float(p[i]) for i in row])
                for row, p in zip(order, probs)]
