"""Prometheus metrics of one server (a registry of its own: no global state)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tailorrt.serving.batcher import Observer

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics(Observer):
    """Requests, failures, queue and compute durations and batch sizes, per task."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tailorrt_requests_total", "Requests received", ["task", "endpoint"], registry=r)
        self.failures = Counter("tailorrt_request_failures_total", "Requests answered with an error",
                                ["task", "code"], registry=r)
        self.latency = Histogram("tailorrt_request_seconds", "Time from request to answer", ["task"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("tailorrt_queue_seconds", "Time a request waited for its batch", ["task"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("tailorrt_compute_seconds", "Time to run one batch", ["task"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tailorrt_batch_size", "Images per batch run", ["task"], buckets=BATCH_BUCKETS,
                                    registry=r)
        self.tasks = Gauge("tailorrt_tasks_loaded", "Tasks loaded in the runtime", registry=r)

    def batch(self, task: str, size: int, compute_s: float) -> None:
        self.batch_size.labels(task).observe(size)
        self.compute.labels(task).observe(compute_s)

    def queued(self, task: str, wait_s: float) -> None:
        self.queue.labels(task).observe(wait_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
