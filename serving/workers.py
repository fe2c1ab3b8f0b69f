"""``tailor serve --workers N``: N server processes on one port that hold one physical copy of the weights.

The event loop that parses requests runs in one thread per process; on a small network it, not the network, is
what a server's throughput is made of. N processes parse N requests at once, and this module keeps what makes them
one server:

- **One copy of the weights.** The parent loads the runtime once before any worker starts (so a bad option or
  model directory is one line, as without workers) and writes the universal weights, as ONNX Runtime lays them out
  for this CPU, to the run folder's ``weights/``; every worker maps those files read-only
  (:class:`~tailorrt.onnx_weight_store.WeightStore`), so their pages are shared: the sum of the workers' PSS
  counts the backbone once (``benchmarks/serve_throughput.py --workers`` measures it).
- **One port.** uvicorn's supervisor binds the HTTP socket once and hands it to every worker (the kernel spreads
  connections over them), restarts a worker that dies and stops them all on SIGTERM; each worker's gRPC server
  binds the gRPC port with ``SO_REUSEPORT``.
- **One set of figures.** Each worker counts in prometheus_client's multiprocess files (``metrics/``), and
  ``/metrics`` and the statistics extension sum every worker's, whichever worker answers
  (:class:`~tailorrt.serving.metrics.Metrics`).
- **One set of tasks.** A repository load or unload, on whichever worker it lands, is applied there, then written
  to ``tasks.json`` (:mod:`tailorrt.serving.task_set`); every worker applies the new set within 0.2 s and says
  so, and the request is answered once every live worker serves the new set. A worker that restarts loads the
  current set.

Each worker batches on its own. The run folder is a temporary folder, removed when the server stops.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tailorrt.errors import ConfigError
from tailorrt.limits import Limits
from tailorrt.serving.config import BatchConfig, ServerConfig
from tailorrt.serving.task_set import TaskSet

SPEC_ENV = "TAILOR_SERVE_WORKER"  # the worker's ServeSpec, as JSON, in each worker's environment
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess folder


@dataclass(frozen=True)
class ServeSpec:
    """What one server process builds: the runtime's settings and the server's, and (with workers) the run
    folder they share."""

    model_dir: str
    tasks: list[str] | None = None  # None: every task of the model directory
    backend: str = "onnx"
    device: str = "cpu"
    share_weights: bool = True
    precision: str = "fp32"
    limits: Limits = field(default_factory=Limits)
    server: ServerConfig = field(default_factory=ServerConfig)
    folder: str | None = None  # the run folder of tailor serve --workers N

    def runtime(self):
        """The runtime this spec describes (its weights mapped from the run folder, if any)."""
        from tailorrt.runtime import Runtime

        weights = Path(self.folder) / "weights" if self.folder else None
        return Runtime(self.model_dir, tasks=self.tasks, backend=self.backend, device=self.device,
                       share_weights=self.share_weights, precision=self.precision, limits=self.limits,
                       weights_dir=weights)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ServeSpec:
        server = {**data["server"], "batch": BatchConfig(**data["server"]["batch"])}
        return cls(**{**data, "server": ServerConfig(**server), "limits": Limits.from_json(data["limits"])})


def worker_app():
    """The app of one worker process (uvicorn's factory): its spec from the environment, its task set from the run
    folder (so that a restarted worker serves what the others do)."""
    from tailorrt.serving.app import create_app

    spec = ServeSpec.from_json(json.loads(os.environ[SPEC_ENV]))
    folder = Path(spec.folder)
    _, tasks = TaskSet(folder).read()
    return create_app(replace(spec, tasks=tasks).runtime(), spec.server, folder=folder)


def check_workers(spec: ServeSpec, workers: int) -> None:
    """Refuse workers that could not share the weights."""
    if workers > 1 and (spec.backend != "onnx" or not spec.device.startswith("cpu")):
        raise ConfigError(f"--workers {workers} needs --backend onnx on the CPU: only its weights are mapped from "
                          "files that the workers share (one process of the torch backend holds its own copy)")


def serve_workers(spec: ServeSpec, workers: int, uvicorn_config: Callable[..., object],
                  announce: Callable[[list[str]], None]) -> None:
    """Run ``workers`` worker processes until SIGTERM or Ctrl-C. ``uvicorn_config(app, **kw)`` makes the uvicorn
    config (the header timeout's); ``announce(tasks)`` prints the serving line once the runtime loaded."""
    from uvicorn.supervisors import Multiprocess

    check_workers(spec, workers)
    config = uvicorn_config("tailorrt.serving.workers:worker_app", factory=True, workers=workers)
    socket = config.bind_socket()  # a port in use is refused before anything is loaded
    folder = Path(tempfile.mkdtemp(prefix="tailorrt-workers-"))
    try:
        (folder / "metrics").mkdir()
        spec = replace(spec, folder=str(folder))
        runtime = spec.runtime()  # checks everything once, and writes the shared weights before any worker maps them
        tasks = runtime.tasks
        del runtime
        TaskSet(folder).write(0, tasks)
        os.environ[SPEC_ENV] = json.dumps(spec.to_json())
        os.environ[METRICS_ENV] = str(folder / "metrics")
        announce(tasks)
        Multiprocess(config, sockets=[socket]).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
