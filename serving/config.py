"""The settings of a server, each declared once: the batcher's, one server's (HTTP and gRPC) and a Ray Serve
deployment's. ``tailor serve`` takes its options' defaults from these classes, and ``--ray`` hands every one of its
settings to the replicas (``tests/test_ray.py`` checks each option of ``tailor serve`` either reaches the Serve
config or is refused in one line). Plain dataclasses: both transports and the Ray deployment import them without
importing each other."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tailorrt.errors import ConfigError
from tailorrt.limits import MIB, Limits


@dataclass(frozen=True)
class BatchConfig:
    """How requests of one task are batched."""

    max_batch: int = 32  # largest batch run at once per task
    max_delay_ms: float = 5.0  # longest wait for a batch to fill
    max_queue: int = 512  # images waiting per task before 503
    workers: int = 1  # batches run at once, over all tasks

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_delay_ms < 0 or self.max_queue < self.max_batch or self.workers < 1:
            raise ConfigError("--max-batch and --batch-workers must be >= 1, --max-delay-ms >= 0 and --max-queue "
                              ">= --max-batch")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and access of one server."""

    max_body_bytes: int = 16 * MIB
    body_timeout_s: float = 30.0  # the whole body must arrive within this time of the request's headers
    header_timeout_s: float = 10.0  # a request's headers must arrive whole within this time (HTTP, tailor serve)
    api_key: str | None = None
    batch: BatchConfig = BatchConfig()
    grpc_port: int | None = None  # the gRPC endpoint's port (None: no gRPC)
    grpc_host: str = "127.0.0.1"
    grpc_workers: int = 64  # gRPC calls served at once (each waits for its batch in a thread)
    grace_s: float = 30.0  # in-flight gRPC calls get this long to finish on shutdown
    workers: int = 1  # server processes on the same ports (tailor serve --workers; serving/workers.py)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty, which would turn authentication off; set a non-empty key "
                              "or leave it unset")
        if (self.max_body_bytes < 1 or self.body_timeout_s <= 0 or self.grpc_workers < 1 or self.header_timeout_s <= 0
                or self.workers < 1):
            raise ConfigError("the body limit, the body and header timeouts, the gRPC workers and the workers must be "
                              "positive")


@dataclass
class RayConfig:
    """One Ray Serve deployment of a model directory (the ``args`` of ``tailorrt.serving.ray:build``, flat in a
    Serve config)."""

    model_dir: str
    backend: str = "onnx"
    device: str = "cpu"
    precision: str = "fp32"  # fp32, int8 (onnx) or bf16 (torch): tailorrt.precision
    share_weights: bool = True  # False: each task's graph with the weights folded in (--fuse-weights)
    threads: int | None = None  # per replica (None: the backend's default)
    replicas: int = 2
    max_tasks_per_replica: int = 4
    replica_cpus: float = 1.0  # Ray CPUs reserved per worker replica
    replica_gpus: float | None = None  # Ray GPUs per worker replica (None: 1 with a cuda device, else 0)
    max_ongoing_requests: int = 64  # requests one worker replica takes at once (its batcher queues them)
    request_timeout_s: float = 30.0  # a forwarded request gets an answer or 503 within this time
    retries: int = 1  # further replicas tried when one dies or cannot be reached
    max_body_mb: float = ServerConfig.max_body_bytes / MIB
    body_timeout_s: float = ServerConfig.body_timeout_s
    api_key: str | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_tasks_per_replica < 1 or self.max_ongoing_requests < 1:
            raise ConfigError("replicas, --max-tasks-per-replica and max_ongoing_requests must be at least 1")
        if self.request_timeout_s <= 0 or self.retries < 0 or self.replica_cpus < 0 or (self.replica_gpus or 0) < 0:
            raise ConfigError("request_timeout_s must be positive; retries, replica_cpus and replica_gpus not "
                              "negative")

    @property
    def gpus_per_replica(self) -> float:
        if self.replica_gpus is not None:
            return self.replica_gpus
        return 1.0 if self.device.startswith("cuda") else 0.0

    def server(self) -> ServerConfig:
        """The settings of each worker replica's app."""
        return ServerConfig(max_body_bytes=int(self.max_body_mb * MIB), body_timeout_s=self.body_timeout_s,
                            api_key=self.api_key, batch=self.batch)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RayConfig:
        """The config from :meth:`to_json` or from a Serve config's ``args`` (flat keys, strings allowed; a config
        written before a setting existed gets its default)."""
        data = dict(data)
        batch = data.pop("batch", None) or {}
        limits = data.pop("limits", None) or {}
        try:
            return cls(**data, batch=BatchConfig(**batch),
                       limits=Limits.from_json(limits))
        except TypeError as e:
            raise ConfigError(f"bad Ray deployment arguments: {e}") from e
