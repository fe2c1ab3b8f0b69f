"""What the server does, whatever the transport: HTTP (:mod:`tailorrt.serving.app`) and gRPC
(:mod:`tailorrt.serving.grpc_server`) are thin adapters over one :class:`Service`, which holds the
:class:`~tailorrt.Runtime`, the batcher and the metrics. Answers are plain dicts in the KServe v2 / Triton JSON
forms (metadata, model configuration, statistics, repository index); the gRPC side parses the same dicts into
its messages, so both transports say the same thing."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from tailorrt.cpu import cpu_threads
from tailorrt.errors import (
    BadInputError,
    TailorError,
    UnknownTaskError,
)
from tailorrt.runtime import Runtime
from tailorrt.serving.batcher import BatchConfig, Batcher, Deferred
from tailorrt.serving.metrics import Metrics
from tailorrt.serving.protocol import (
    INPUTS,
    OUTPUTS,
    VERSION,
    InferRequest,
    Output,
    declared_images,
    outputs,
    request_batch,
)
from tailorrt.serving.task_set import TaskSet, TaskSync
from tailorrt.version import __version__

EXTENSIONS = ["classification", "model_repository", "model_configuration", "statistics", "binary_tensor_data"]
_CONFIG_TYPES = {"BYTES": "TYPE_STRING", "UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32"}


INLINE_VALUES = 4096  # outputs up to this many numbers are encoded on the event loop (no thread hop)
T = TypeVar("T")
CLIENT_CLOSED = 499  # the client went away before its answer (nginx's code; statistics and metrics count it)


def http_status(e: BaseException) -> int:
    """The HTTP status of an error (:class:`~tailorrt.errors.TailorError` carries its own); 499 for a client that
    disconnected; 500 for anything unexpected."""
    if isinstance(e, ClientDisconnect):
        return CLIENT_CLOSED
    return e.http_status if isinstance(e, TailorError) else 500


def key_matches(key: str, x_api_key: str | None, authorization: str | None) -> bool:
    """Whether a request carries ``key`` as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (HTTP headers or
    gRPC metadata), compared in constant time."""
    given = x_api_key or ""
    if (authorization or "").lower().startswith("bearer "):
        given = authorization[7:].strip()
    return hmac.compare_digest(given.encode(), key.encode())


class Service:
    """Health, metadata, configuration, statistics, repository and inference over one runtime and batcher.

    ``on_demand`` (one replica of a Ray deployment, :mod:`tailorrt.serving.ray`): every task of the model directory
    is offered, and is loaded when a request for it arrives; tasks are evicted by the deployment, not unloaded.

    ``folder``: the run folder of one worker of ``tailor serve --workers N`` (:mod:`tailorrt.serving.workers`):
    metrics and statistics are every worker's, and a load or unload reaches every worker."""

    def __init__(self, runtime: Runtime, batch: BatchConfig = BatchConfig(), on_demand: bool = False,
                 folder: Path | None = None) -> None:
        self.runtime, self.batch_config, self.on_demand = runtime, batch, on_demand
        self.metrics = Metrics(folder / "metrics" if folder else None)
        self.batcher = Batcher(runtime.logits, batch, self.metrics, decode_threads=cpu_threads())
        self.sync = None
        if folder is not None:
            self.sync = TaskSync(TaskSet(folder), lambda: self.runtime.tasks, self.runtime.add_task, self.evict)

    # ------------------------------------------------------------------ health and metadata

    def ready(self) -> bool:
        return bool(self.models())

    def models(self) -> list[str]:
        """The tasks offered: those loaded, or (on demand) every task of the model directory."""
        return self.runtime.model_dir.task_names() if self.on_demand else self.runtime.tasks

    def task_list(self) -> dict:
        """``GET /v1/tasks``: the backbone, the backend and every offered task's classes, method and sizes."""
        infos = [self.runtime.describe(t) if self.on_demand else self.runtime.task(t) for t in self.models()]
        b = self.runtime.backbone_record
        return {"backbone": {"name": b.name, "sha256": b.sha256, "bytes": b.bytes, "params": b.params},
                "backend": self.runtime.backend.name, "precision": self.runtime.precision,
                "tasks": [i.to_json() for i in infos]}

    def model_ready(self, task: str, version: str = "") -> bool:
        return task in self.runtime.tasks and version in ("", VERSION)

    def check(self, task: str, version: str = "") -> None:
        """Refuse a task that is not loaded, or a version other than the one each task has."""
        self.runtime.task(task)
        if version not in ("", VERSION):
            raise UnknownTaskError(f"task {task!r} has only version {VERSION}, not {version!r}")

    def server_metadata(self) -> dict:
        return {"name": "tailorrt", "version": __version__, "extensions": EXTENSIONS,
                "backend": self.runtime.backend.name, "precision": self.runtime.precision, "tasks": self.models()}

    def _dims(self, task: str) -> dict[str, list[int]]:
        """Each input's and output's dimensions without the batch dimension (config), after it (metadata)."""
        info = self.runtime.task(task)
        s, k = info.preprocess.size, len(info.classes)
        return {"image": [1], "pixels": [-1, -1, 3], "input": [3, s, s], **{name: [k] for name in OUTPUTS}}

    def model_metadata(self, task: str, version: str = "") -> dict:
        self.check(task, version)
        info, dims = self.runtime.task(task), self._dims(task)
        return {"name": task, "versions": [VERSION], "platform": self.platform,
                "inputs": [{"name": n, "datatype": t, "shape": [-1, *dims[n]]} for n, t in INPUTS.items()],
                "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, *dims[name]]} for name in OUTPUTS],
                "parameters": {"classes": info.classes, "method": info.method, "preprocess": info.preprocess.to_json(),
                               "precision": self.runtime.precision}}

    @property
    def platform(self) -> str:
        return f"tailorrt_{self.runtime.backend.name}"

    def model_config(self, task: str, version: str = "") -> dict:
        """Triton's model configuration (its JSON form): dims leave out the batch dimension."""
        self.check(task, version)
        info, dims, b = self.runtime.task(task), self._dims(task), self.batch_config
        inputs = [{"name": n, "data_type": _CONFIG_TYPES[t], "dims": dims[n], "optional": True}
                  for n, t in INPUTS.items()]
        inputs[0]["reshape"] = {"shape": []}  # one encoded image per batch element
        return {"name": task, "platform": self.platform, "backend": "tailorrt", "max_batch_size": b.max_batch,
                "version_policy": {"latest": {"num_versions": 1}},
                "input": inputs,
                "output": [{"name": name, "data_type": "TYPE_FP32", "dims": dims[name]} for name in OUTPUTS],
                "dynamic_batching": {"preferred_batch_size": [b.max_batch],
                                     "max_queue_delay_microseconds": int(b.max_delay_ms * 1000),
                                     "default_queue_policy": {"max_queue_size": b.max_queue}},
                "instance_group": [{"name": task, "count": b.workers, "kind": "KIND_CPU"
                                    if self.runtime.device == "cpu" else "KIND_GPU"}],
                "parameters": {"classes": {"string_value": ",".join(info.classes)},
                               "method": {"string_value": info.method}}}

    def statistics(self, task: str = "", version: str = "") -> dict:
        """Triton's statistics: of one task, or of every loaded task."""
        if task:
            self.check(task, version)
        return self.metrics.statistics([task] if task else self.models())

    # ------------------------------------------------------------------ model repository

    def repository_index(self) -> list[dict]:
        loaded = set(self.models())
        return [{"name": t, "version": VERSION, "state": "READY"} if t in loaded else
                {"name": t, "version": VERSION, "state": "UNAVAILABLE", "reason": "unloaded"}
                for t in self.runtime.model_dir.task_names()]

    def load(self, task: str) -> None:
        """Add a task of the model directory (the backbone stays; only the task is built). Blocking."""
        have = self.runtime.model_dir.task_names()
        if task not in have:
            raise UnknownTaskError(f"no task {task!r} in the model directory (tasks: {', '.join(have) or 'none'})")
        if task not in self.runtime.tasks:
            self.runtime.add_task(task)
        if self.sync is not None:
            self.sync.changed(add=task)

    def unload(self, task: str) -> None:
        """Drop a task: what is queued for it is answered first, later requests get 404. Blocking."""
        if self.on_demand:
            raise BadInputError("in a Ray deployment every task is loaded on first use and evicted least recently "
                                "used (--max-tasks-per-replica); there is nothing to unload")
        self.evict(task)
        if self.sync is not None:
            self.sync.changed(remove=task)

    def evict(self, task: str) -> None:
        """Drop a loaded task (what is queued for it is answered first). Blocking."""
        self.runtime.task(task)
        self.batcher.drop(task)
        self.runtime.remove_task(task)
        self.batcher.drop(task)  # a request that slipped in meanwhile gets a 404

    # ------------------------------------------------------------------ inference

    def _label(self, task: str) -> str:
        return task if task in self.runtime.tasks else "unknown"  # bounded label values

    @contextmanager
    def call(self, task: str, endpoint: str, version: str = "") -> Iterator[None]:
        """Count and time one inference request; an error is recorded with its HTTP status and re-raised."""
        start = time.perf_counter()
        label = self._label(task)
        self.metrics.received(label, endpoint)
        try:
            self.check(task, version)
            yield
        except BaseException as e:
            self.metrics.answered(label, time.perf_counter() - start, http_status(e) if isinstance(e, Exception)
                                  else CLIENT_CLOSED)
            raise
        self.metrics.answered(label, time.perf_counter() - start)

    def refused(self, task: str, endpoint: str, code: int, seconds: float = 0.0) -> None:
        """Count an inference request refused with HTTP status ``code`` before it reached :meth:`call` (API key,
        body limits)."""
        label = self._label(task)
        self.metrics.received(label, endpoint)
        self.metrics.answered(label, seconds, code)

    @contextmanager
    def _phase(self, task: str, phase: str, started: float | None = None) -> Iterator[None]:
        """Record the time from ``started`` (default: now) to the end of the block as ``phase`` of a request."""
        start = time.perf_counter() if started is None else started
        yield
        self.metrics.timed(task, phase, time.perf_counter() - start)

    def prepare(self, task: str, request: InferRequest, raw: bytes | None, started: float | None = None
                ) -> np.ndarray:
        """The request's input as the task's batch (blocking: decodes images). Its ``compute_input`` time runs
        from ``started`` (when the transport began to parse the request) or from now."""
        with self._phase(task, "compute_input", started):
            return request_batch(self.runtime, task, request, raw)

    def answer(self, task: str, request: InferRequest, logits: np.ndarray, binary: bool = False) -> list[Output]:
        with self._phase(task, "compute_output"):
            return outputs(self.runtime, task, request, logits, binary)

    def run(self, task: str, request: InferRequest, raw: bytes | None, binary: bool = False,
            started: float | None = None) -> list[Output]:
        """Answer a parsed request, blocking until its batch has run (for threaded transports such as gRPC)."""
        x = self.prepare(task, request, raw, started)
        return self.answer(task, request, self.batcher.submit(task, x).result(), binary)

    async def run_async(self, task: str, parse: Callable[[], tuple[InferRequest, bytes | None]],
                        encode: Callable[[InferRequest, list[Output]], T], *, inline: bool = False) -> T:
        """As :meth:`run`, for the HTTP server. ``parse`` (the transport's: the request and its raw input bytes)
        runs on the event loop when ``inline`` (a small body), else in a worker thread; the request is then queued
        for its batch with its images still to decode, which the batcher's decode threads do while the running
        batch runs (:class:`~tailorrt.serving.batcher.Deferred`), so no thread is held and the event loop hands the
        request over once; ``encode`` (the transport's answer) runs on the event loop where the outputs are small
        (at most :data:`INLINE_VALUES` numbers, a few tens of microseconds), else in a worker thread. The request's
        ``compute_input`` is its parsing and its decoding; its wait for a decode thread is part of ``queue``."""
        started = time.perf_counter()
        request, raw = parse() if inline else await run_in_threadpool(parse)
        parsed_s = time.perf_counter() - started

        def make() -> np.ndarray:  # compute_input: the parsing, and the decoding from when it starts
            return self.prepare(task, request, raw, time.perf_counter() - parsed_s)

        deferred = Deferred(declared_images(self.runtime, request), make)
        logits = await asyncio.wrap_future(self.batcher.submit(task, deferred))

        def answer() -> T:
            return encode(request, self.answer(task, request, logits))

        return answer() if logits.size <= INLINE_VALUES else await run_in_threadpool(answer)

    async def predict_async(self, task: str, data: bytes, top_k: int) -> dict:
        """The v1 upload endpoint's answer for one encoded image (count it with :meth:`call`), decoded in the
        batcher's decode threads as :meth:`run_async`'s."""

        def make() -> np.ndarray:
            with self._phase(task, "compute_input"):
                return self.runtime.preprocess(task, data)

        logits = await asyncio.wrap_future(self.batcher.submit(task, Deferred(1, make)))
        p = self.runtime.decode(task, logits, top_k)[0]
        return {"task": task, "label": p.label,
                "top_k": [{"label": l, "index": i, "score": s} for l, i, s in zip(p.labels, p.indices, p.scores)]}

    def close(self) -> None:
        """Answer what is queued, then stop the batch workers."""
        if self.sync is not None:
            self.sync.close()
        self.batcher.close()

