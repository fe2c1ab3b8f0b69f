"""Tasks spread over Ray Serve replicas: ``tailor serve --ray``, or ``serve run`` / ``serve deploy`` of
``tailorrt.serving.ray:build`` on a cluster.

Two deployments make the application:

- :class:`TaskWorker`, ``replicas`` of it: each builds one :class:`~tailorrt.Runtime` (the backbone once) and the
  same app as ``tailor serve`` over it, and loads a task when the first request for it arrives. Ray Serve's model
  multiplexing (``serve.multiplexed``, the task as the multiplexed model id) routes a task's requests to a
  replica that holds it, and evicts the least recently used task beyond ``max_tasks_per_replica``. Requests are
  batched per replica, over its tasks, as in ``tailor serve``.
- :class:`Ingress`, the HTTP entry: the same API as ``tailor serve`` (KServe v2 with binary tensor data,
  ``/v1/tasks/...:predict``, health, ``/metrics``). It reads the task from the path and forwards the request,
  bytes unchanged, to a worker with that task as the model id. A worker that dies (or cannot be reached)
  is retried on another replica; when none answers within ``request_timeout_s`` the client gets 503 with
  ``Retry-After``, never a hang.

Every replica reads the model directory from ``model_dir``, a path that every node of the cluster sees (a shared
filesystem, or a folder synced from object storage onto each node before the replicas start); files are checked
against their recorded sha256 as in ``tailor serve``.
"""

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import RayServeException
from starlette.concurrency import run_in_threadpool

from tailorrt.errors import OverloadedError, TailorError
from tailorrt.runtime import Runtime
from tailorrt.serving import routes
from tailorrt.serving.app import (
    KEY_MISSING,
    NO_TELEMETRY,
    BodyGuard,
    authorised,
    create_app,
    error_response,
)
from tailorrt.serving.config import RayConfig
from tailorrt.serving.metrics import Metrics
from tailorrt.serving.routes import inference_task, task_of
from tailorrt.serving.service import http_status

APP_NAME = "tailorrt"
REPLICA_HEADER = "X-Tailor-Replica"  # the worker replica that answered
LOADED_HEADER = "X-Tailor-Replica-Tasks"  # the tasks that replica holds after answering
# a forwarded request that failed because its replica died or could not be reached: worth another replica
_REPLICA_FAILURES = (RayActorError, ConnectionError)
_HOP_HEADERS = ("host", "content-length", "transfer-encoding", "connection")  # set again for the replica's app


@dataclass
class Forwarded:
    """An HTTP request as the ingress received it, for a worker's app."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Answer:
    """A worker app's HTTP answer, with the replica that gave it and the tasks it then holds."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    replica: str = ""
    tasks: list[str] = field(default_factory=list)


class _Loaded:
    """A task loaded on a replica, as Ray's multiplexer holds it: evicting it waits for its requests in flight,
    then drops it from the runtime."""

    def __init__(self, worker: "TaskWorker", task: str) -> None:
        self.worker, self.task = worker, task
        self.in_flight, self.gone = 0, False
        self.idle = threading.Condition()

    def __enter__(self) -> "_Loaded":  # noqa: PYI034 (typing.Self is Python 3.11+)
        with self.idle:
            self.in_flight += 1
        return self

    def __exit__(self, *_exc) -> None:
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

    def __del__(self) -> None:  # called by Ray's multiplexer on eviction (in a thread), and again by the collector
        if self.gone:
            return
        self.gone = True
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=self.worker.cfg.request_timeout_s)
        self.worker.evicted(self.task)


class TaskWorker:
    """One replica: a Runtime holding the backbone once and at most ``max_tasks_per_replica`` tasks, served by the
    same app as ``tailor serve``."""

    def __init__(self, config: dict) -> None:
        self.cfg = RayConfig.from_json(config)
        self.runtime = Runtime(self.cfg.model_dir, tasks=[], backend=self.cfg.backend, device=self.cfg.device,
                               threads=self.cfg.threads, limits=self.cfg.limits, precision=self.cfg.precision,
                               share_weights=self.cfg.share_weights)
        self.app = create_app(self.runtime, self.cfg.server(), on_demand=True)
        self.service = self.app.state.service
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://replica",
                                        timeout=None)
        try:
            self.replica = serve.get_replica_context().replica_id.to_full_id_str()  # its Ray actor's name
        except RayServeException:  # built outside a replica
            self.replica = f"pid-{os.getpid()}"

        async def load(task: str) -> _Loaded:  # a plain function: Ray keeps its multiplexer on it
            await run_in_threadpool(self.service.load, task)
            return _Loaded(self, task)

        self.load_task = serve.multiplexed(max_num_models_per_replica=self.cfg.max_tasks_per_replica)(load)

    def evicted(self, task: str) -> None:
        if task in self.runtime.tasks:
            self.service.evict(task)

    async def handle(self, request: Forwarded) -> Answer:
        """Answer one forwarded request with this replica's app, loading its task first (the multiplexed model id)."""
        task = serve.get_multiplexed_model_id()
        try:
            if not task:
                answer = await self._call(request)
            else:
                with await self.load_task(task):
                    answer = await self._call(request)
        except TailorError as e:  # the task cannot be loaded here (missing, corrupt pack...): the replica stays up
            answer = _json_answer(http_status(e), {"error": str(e)})
        answer.replica, answer.tasks = self.replica, self.runtime.tasks
        return answer

    async def _call(self, request: Forwarded) -> Answer:
        r = await self.client.request(request.method, request.path, params=request.query.encode() or None,
                                      headers=request.headers, content=request.body)
        return Answer(r.status_code, list(r.headers.multi_items()), r.content)


class Ingress:
    """The HTTP entry: answers health and ``/metrics`` itself and forwards everything else to a worker replica."""

    def __init__(self, worker: Any, config: dict) -> None:
        self.worker, self.cfg = worker, RayConfig.from_json(config)
        self.metrics = Metrics()
        self.replica_tasks: dict[str, list[str]] = {}  # what each worker replica held at its last answer

    async def forward(self, request: Request) -> Response:
        path = request.url.path
        if path == routes.LIVE:
            return JSONResponse({"live": True})
        if path == routes.METRICS:
            if self.cfg.api_key and not authorised(request, self.cfg.api_key):
                return error_response(401, KEY_MISSING)
            self.metrics.tasks.set(sum(len(t) for t in self.replica_tasks.values()))
            return Response(self.metrics.render(), media_type=self.metrics.content_type)
        task = task_of(path)
        started = time.perf_counter()
        forwarded = Forwarded(request.method, path, request.url.query,
                              [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS],
                              await request.body())
        answer = await self._send(task, forwarded)
        if inference_task(path) is not None:
            label = task if answer.status != 404 else "unknown"
            self.metrics.received(label, "v1" if path.startswith("/v1") else "v2")
            self.metrics.answered(label, time.perf_counter() - started, None if answer.status < 400 else answer.status)
        headers = {k: v for k, v in answer.headers if k.lower() not in ("content-length", "connection")}
        if answer.replica:
            self.replica_tasks[answer.replica] = answer.tasks
            headers[REPLICA_HEADER], headers[LOADED_HEADER] = answer.replica, ",".join(answer.tasks)
        return Response(answer.body, status_code=answer.status, headers=headers)

    async def _send(self, task: str | None, request: Forwarded) -> Answer:
        """The worker's answer; a dead or unreachable replica is retried, and no answer in time is 503."""
        deadline = time.monotonic() + self.cfg.request_timeout_s
        handle = self.worker.options(multiplexed_model_id=task or "", method_name="handle")
        failure = "no worker replica answered"
        for attempt in range(self.cfg.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            response = handle.remote(request)
            try:
                return await asyncio.wait_for(response, left)
            except asyncio.TimeoutError:
                response.cancel()
                failure = f"no worker replica answered within {self.cfg.request_timeout_s:g} s"
                break
            except _REPLICA_FAILURES as e:
                failure = f"the worker replica failed ({type(e).__name__}) and {attempt + 1} tried"
                await asyncio.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
            except RayTaskError as e:
                return _json_answer(500, {"error": f"internal error: {e.cause!r}"})
        return _json_answer(503, {"error": f"{failure}; retry shortly"},
                            {"Retry-After": str(OverloadedError.retry_after_s)})


def _json_answer(status: int, body: dict, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, [("content-type", "application/json"), *(headers or {}).items()], json.dumps(body).encode())


def ingress_app(config: RayConfig) -> FastAPI:
    """The ingress's FastAPI app: one catch-all route, the body bounded as in ``tailor serve``."""
    app = FastAPI(title="tailorrt (Ray Serve)", docs_url=None, redoc_url=None, openapi_url=None,
                  telemetry=NO_TELEMETRY)
    app.add_middleware(BodyGuard, limit=int(config.max_body_mb * 1024 * 1024), timeout_s=config.body_timeout_s)
    return app


def application(config: RayConfig) -> serve.Application:
    """The Ray Serve application: ``config.replicas`` workers behind one ingress."""
    worker = serve.deployment(TaskWorker, name="TaskWorker", num_replicas=config.replicas,
                              max_ongoing_requests=config.max_ongoing_requests,
                              ray_actor_options={"num_cpus": config.replica_cpus,
                                                 "num_gpus": config.gpus_per_replica})
    app = ingress_app(config)

    @serve.ingress(app)
    class HTTPIngress(Ingress):  # this module has no postponed annotations: FastAPI reads the route's as they are
        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
        async def route(self, request: Request) -> Response:
            return await self.forward(request)

    ingress = serve.deployment(HTTPIngress, name="Ingress", num_replicas=1, max_ongoing_requests=1024,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(worker.bind(config.to_json()), config.to_json())


def build(args: dict) -> serve.Application:
    """The application builder that ``serve run`` and a Serve config's ``import_path`` name
    (``tailorrt.serving.ray:build``); ``args`` are :class:`RayConfig`'s fields."""
    return application(RayConfig.from_json(args))


def serve_forever(config: RayConfig, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                  num_cpus: int | None = None, report: Callable[[str], None] = print) -> None:
    """Deploy on a local Ray cluster of ``num_cpus`` on loopback (started here, stopped on return) or, given
    ``address``, on a running cluster; serve until SIGINT or SIGTERM, then delete the application."""
    import ray

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    local = {} if address else {"num_cpus": num_cpus, "_node_ip_address": "127.0.0.1"}  # a local cluster: loopback
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application(config), name=APP_NAME, route_prefix="/")
        report(f"serving every task of {config.model_dir} on http://{host}:{port} with Ray Serve: "
               f"{config.replicas} replicas, at most {config.max_tasks_per_replica} tasks each ({config.backend} "
               f"backend); Ray cluster {ray.get_runtime_context().gcs_address}")
        stop.wait()
    finally:
        serve.delete(APP_NAME)
        if address is None:
            serve.shutdown()
        ray.shutdown()


def serve_config(config: RayConfig, *, host: str = "0.0.0.0", port: int = 8000) -> dict:
    """A Ray Serve config file (``serve deploy`` / ``serve run``) deploying ``config`` on a cluster."""
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port},
            "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": "tailorrt.serving.ray:build",
                              "args": config.to_json()}]}
