"""What one server counts, recorded once and shown two ways: Prometheus ``/metrics`` and Triton's statistics
extension (``/v2/models[/{task}]/stats``, gRPC ``ModelStatistics``). Every figure comes from one call on
:class:`Metrics`, which feeds both, and both read the same Prometheus samples: those of this process (a registry of
its own: no global state), or with ``multiprocess_dir`` those of every worker of ``tailor serve --workers N``,
summed by prometheus_client's multiprocess mode from the files each worker writes there."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tailorrt.serving.batcher import Observer

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


def _duration(count: float, seconds: float) -> dict:
    return {"count": int(count), "ns": int(round(seconds * 1e9))}


class Metrics(Observer):
    """Requests, failures, phase durations and batch sizes, per task."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        """``multiprocess_dir``: the folder of prometheus_client's multiprocess mode, which must also be in the
        environment (``PROMETHEUS_MULTIPROC_DIR``) before prometheus_client is first imported in the process."""
        self.multiprocess_dir = multiprocess_dir
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
        self.tasks = Gauge("tailorrt_tasks_loaded", "Tasks loaded in the runtime", registry=r,
                           multiprocess_mode="livemostrecent")
        # Triton's statistics, as sums that add up across workers
        self.stat_seconds = Counter("tailorrt_stats_seconds", "Triton statistics: seconds spent by requests in "
                                    "each phase", ["task", "phase"], registry=r)
        self.stat_count = Counter("tailorrt_stats_requests", "Triton statistics: requests counted in each phase",
                                  ["task", "phase"], registry=r)
        self.batch_seconds = Counter("tailorrt_batch_seconds", "Seconds spent running batches, by batch size",
                                     ["task", "size"], registry=r)
        self.batches = Counter("tailorrt_batches", "Batches run, by batch size", ["task", "size"], registry=r)
        self.last_inference = Gauge("tailorrt_last_inference_ms", "When the task last ran a batch (ms since the "
                                    "epoch)", ["task"], registry=r, multiprocess_mode="max")

    def received(self, task: str, endpoint: str) -> None:
        self.requests.labels(task, endpoint).inc()

    def answered(self, task: str, seconds: float, code: int | None = None) -> None:
        """An inference request answered after ``seconds``: successfully, or with HTTP status ``code``."""
        self.latency.labels(task).observe(seconds)
        if code is not None:
            self.failures.labels(task, str(code)).inc()
        self._stat(task, "success" if code is None else "fail", seconds)

    def timed(self, task: str, phase: str, seconds: float) -> None:
        """A request's ``compute_input`` or ``compute_output`` phase."""
        self.phase.labels(task, phase).observe(seconds)
        self._stat(task, phase, seconds)

    def batch(self, task: str, size: int, requests: int, compute_s: float) -> None:
        self.batch_size.labels(task).observe(size)
        self.compute.labels(task).observe(compute_s)
        self._stat(task, "compute_infer", compute_s * requests, requests)  # each request waited the whole batch
        self.batch_seconds.labels(task, str(size)).inc(compute_s)
        self.batches.labels(task, str(size)).inc()
        self.last_inference.labels(task).set(int(time.time() * 1000))

    def queued(self, task: str, wait_s: float) -> None:
        self.queue.labels(task).observe(wait_s)
        self._stat(task, "queue", wait_s)

    def _stat(self, task: str, phase: str, seconds: float, count: int = 1) -> None:
        self.stat_seconds.labels(task, phase).inc(seconds)
        self.stat_count.labels(task, phase).inc(count)

    def statistics(self, tasks: list[str]) -> dict:
        """Triton's statistics extension for ``tasks`` (a task that ran nothing yet has zero counts)."""
        values: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        for family in self._collect():
            for sample in family.samples:
                labels = sample.labels
                values[sample.name][tuple(labels.get(k, "") for k in ("task", "phase", "size"))] += sample.value
        seconds, counts = values["tailorrt_stats_seconds_total"], values["tailorrt_stats_requests_total"]
        batch_s, batches = values["tailorrt_batch_seconds_total"], values["tailorrt_batches_total"]
        last = values["tailorrt_last_inference_ms"]
        stats = []
        for task in tasks:
            sizes = sorted(int(size) for (t, _, size) in batches if t == task)
            runs = {size: batches[(task, "", str(size))] for size in sizes}
            stats.append({"name": task, "version": "1", "last_inference": int(last.get((task, "", ""), 0)),
                          "inference_count": int(sum(size * n for size, n in runs.items())),
                          "execution_count": int(sum(runs.values())),
                          "inference_stats": {p: _duration(counts[(task, p, "")], seconds[(task, p, "")])
                                              for p in PHASES},
                          "batch_stats": [{"batch_size": size,
                                           "compute_infer": _duration(runs[size], batch_s[(task, "", str(size))])}
                                          for size in sizes]})
        return {"model_stats": stats}

    def _collect(self):
        if self.multiprocess_dir is None:
            return self.registry.collect()
        return MultiProcessCollector(None, str(self.multiprocess_dir)).collect()

    def render(self) -> bytes:
        """The Prometheus exposition of this process's samples, or of every worker's."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(self.multiprocess_dir))
        return generate_latest(registry)
