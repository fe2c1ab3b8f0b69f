"""What one server counts, recorded once and shown two ways: Prometheus ``/metrics`` and Triton's statistics
extension (``/v2/models[/{task}]/stats``, gRPC ``ModelStatistics``). Every figure comes from one call on
:class:`Metrics`, which feeds both (a registry of its own: no global state)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tailorrt.serving.batcher import Observer

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def to_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class TaskStats:
    """Triton's statistics of one model: per-request durations by phase, and per-batch-size compute."""

    inference_count: int = 0  # images inferred
    execution_count: int = 0  # batches run
    last_inference_ms: int = 0
    durations: dict[str, Duration] = field(default_factory=lambda: defaultdict(Duration))
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))

    def to_json(self, name: str) -> dict:
        phases = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                  "cache_miss")
        return {"name": name, "version": "1", "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {p: self.durations[p].to_json() for p in phases},
                "batch_stats": [{"batch_size": size, "compute_infer": d.to_json()}
                                for size, d in sorted(self.batches.items())]}


class Metrics(Observer):
    """Requests, failures, phase durations and batch sizes, per task."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tailorrt_requests_total", "Inference requests received", ["task", "endpoint"],
                                registry=r)
        self.failures = Counter("tailorrt_request_failures_total", "Inference requests answered with an error "
                                "(by HTTP status, also for gRPC)", ["task", "code"], registry=r)
        self.latency = Histogram("tailorrt_request_seconds", "Time from inference request to answer", ["task"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("tailorrt_queue_seconds", "Time a request waited for its batch", ["task"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("tailorrt_compute_seconds", "Time to run one batch", ["task"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.phase = Histogram("tailorrt_phase_seconds", "Time a request spent parsing and decoding its input "
                               "(compute_input) or building its answer (compute_output)", ["task", "phase"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tailorrt_batch_size", "Images per batch run", ["task"], buckets=BATCH_BUCKETS,
                                    registry=r)
        self.tasks = Gauge("tailorrt_tasks_loaded", "Tasks loaded in the runtime", registry=r)
        self._stats: dict[str, TaskStats] = defaultdict(TaskStats)
        self._lock = threading.Lock()

    def received(self, task: str, endpoint: str) -> None:
        self.requests.labels(task, endpoint).inc()

    def answered(self, task: str, seconds: float, code: int | None = None) -> None:
        """An inference request answered after ``seconds``: successfully, or with HTTP status ``code``."""
        self.latency.labels(task).observe(seconds)
        if code is not None:
            self.failures.labels(task, str(code)).inc()
        with self._lock:
            self._stats[task].durations["success" if code is None else "fail"].add(seconds)

    def timed(self, task: str, phase: str, seconds: float) -> None:
        """A request's ``compute_input`` or ``compute_output`` phase."""
        self.phase.labels(task, phase).observe(seconds)
        with self._lock:
            self._stats[task].durations[phase].add(seconds)

    def batch(self, task: str, size: int, requests: int, compute_s: float) -> None:
        self.batch_size.labels(task).observe(size)
        self.compute.labels(task).observe(compute_s)
        with self._lock:
            s = self._stats[task]
            s.inference_count += size
            s.execution_count += 1
            s.last_inference_ms = int(time.time() * 1000)
            s.durations["compute_infer"].add(compute_s * requests, requests)  # each request waited the whole batch
            s.batches[size].add(compute_s)

    def queued(self, task: str, wait_s: float) -> None:
        self.queue.labels(task).observe(wait_s)
        with self._lock:
            self._stats[task].durations["queue"].add(wait_s)

    def statistics(self, tasks: list[str]) -> dict:
        """Triton's statistics extension for ``tasks`` (a task that ran nothing yet has zero counts)."""
        with self._lock:
            return {"model_stats": [(self._stats.get(t) or TaskStats()).to_json(t) for t in tasks]}

    def render(self) -> bytes:
        return generate_latest(self.registry)
