"""The HTTP server: KServe v2 / Triton inference protocol, a convenience upload endpoint, and metrics.

Every task loaded in the :class:`tailorrt.Runtime` is a model; the model repository extension
(``/v2/repository/...``) loads and unloads the tasks of the model directory while serving, without
reloading the backbone. Errors are JSON ``{"error": "..."}``: unknown task 404, bad input 400, a body that
does not arrive in time 408, too large 413, overloaded 503 (with ``Retry-After``), missing or wrong API key
401, a task the model directory cannot load as asked (missing, corrupt, stale, another backbone) 409.
Requests are parsed, decoded and answered in worker threads; the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tailorrt import __version__
from tailorrt.errors import (
    BackboneMismatchError,
    BadInputError,
    CheckpointError,
    ConfigError,
    InputTooLargeError,
    OverloadedError,
    PackError,
    RequestTimeoutError,
    TailorError,
    UnknownTaskError,
)
from tailorrt.runtime import Runtime
from tailorrt.serving.batcher import BatchConfig, Batcher
from tailorrt.serving.metrics import Metrics
from tailorrt.serving.protocol import parse_json, request_batch, response_body

# 409: the model directory cannot give what was asked (a task whose files are corrupt, stale or from another backbone)
STATUS = {UnknownTaskError: 404, BadInputError: 400, RequestTimeoutError: 408, InputTooLargeError: 413,
          OverloadedError: 503, PackError: 409, CheckpointError: 409, BackboneMismatchError: 409}
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and access of one server."""

    max_body_bytes: int = 16 * 1024 * 1024
    body_timeout_s: float = 30.0  # the whole body must arrive within this time of the request's headers
    api_key: str | None = None
    batch: BatchConfig = BatchConfig()

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty, which would turn authentication off; set a non-empty key "
                              "or leave it unset")
        if self.max_body_bytes < 1 or self.body_timeout_s <= 0:
            raise ConfigError("the body limit and the body timeout must be positive")


class Unauthorized(TailorError):
    """Missing or wrong API key (HTTP 401)."""


def _status(e: Exception) -> int:
    for cls, code in STATUS.items():
        if isinstance(e, cls):
            return code
    return 401 if isinstance(e, Unauthorized) else 500


class BodyGuard:
    """ASGI middleware bounding request bodies: over ``limit`` bytes (by Content-Length, or while streaming in)
    is 413, not complete within ``timeout_s`` of the headers is 408. The refusal is sent whatever the app
    made of the interrupted read (a multipart parser turns it into its own 400), and the connection is closed,
    since the rest of the body is never read."""

    def __init__(self, app, limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _error(413, f"request body of {int(length):,} bytes is over the limit of {self.limit:,}",
                         close=True)(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        seen, complete, failure, started, replaced = 0, False, None, False, False

        async def guarded_receive():
            nonlocal seen, complete, failure
            if failure is not None:
                raise failure
            if complete:  # the body is in; later reads wait for a disconnect and are not timed
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                failure = RequestTimeoutError(f"the request body did not arrive within {self.timeout_s:g} s")
                raise failure from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.limit:
                    failure = InputTooLargeError(f"request body is over the limit of {self.limit:,} bytes")
                    raise failure
            return message

        async def guarded_send(message) -> None:
            nonlocal started, replaced
            if replaced:  # the rest of the app's own answer to the failed read
                return
            if failure is not None and not started:  # answer the failure, whatever the app made of it
                replaced = started = True
                await _error(_status(failure), str(failure), close=True)(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if failure is None or started:
                raise
            await _error(_status(failure), str(failure), close=True)(scope, receive, send)


def _error(code: int, message: str, *, close: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(OverloadedError.retry_after_s)} if code == 503 else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=code, headers=headers)


def create_app(runtime: Runtime, config: ServerConfig = ServerConfig()) -> FastAPI:
    """A FastAPI app serving ``runtime``'s tasks through a per-task batcher."""
    metrics = Metrics()
    batcher = Batcher(runtime.logits, config.batch, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await run_in_threadpool(batcher.close)  # in-flight requests have finished; drain what is queued

    app = FastAPI(title="tailorrt", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime, app.state.batcher, app.state.metrics = runtime, batcher, metrics
    app.add_middleware(BodyGuard, limit=config.max_body_bytes, timeout_s=config.body_timeout_s)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        start = time.perf_counter()
        if config.api_key and request.url.path not in OPEN_PATHS and not _authorised(request, config.api_key):
            response = _error(401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')")
        else:
            response = await call_next(request)
        task = _task_label(request, runtime)
        if task is not None:
            metrics.latency.labels(task).observe(time.perf_counter() - start)
            if response.status_code >= 400:
                metrics.failures.labels(task, str(response.status_code)).inc()
        return response

    @app.exception_handler(TailorError)
    async def tailor_error(_request: Request, e: TailorError):
        return _error(_status(e), str(e))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, e: RequestValidationError):
        return _error(400, f"invalid request: {e.errors()[0].get('msg', e)}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, e: Exception):
        return _error(500, f"internal error: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ health and metadata

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        ok = bool(runtime.tasks)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "tailorrt", "version": __version__, "extensions": ["classification", "model_repository"],
                "backend": runtime.backend.name, "tasks": runtime.tasks}

    @app.get("/v2/models")
    async def models():
        return {"models": [{"name": t, "versions": ["1"], "state": "READY"} for t in runtime.tasks]}

    @app.get("/v2/models/{task}")
    async def model_metadata(task: str):
        info = runtime.task(task)
        s, k = info.preprocess.size, len(info.classes)
        return {"name": task, "versions": ["1"], "platform": f"tailorrt_{runtime.backend.name}",
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                           {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
                           {"name": "input", "datatype": "FP32", "shape": [-1, 3, s, s]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]}],
                "parameters": {"classes": info.classes, "method": info.method, "preprocess": info.preprocess.to_json()}}

    @app.get("/v2/models/{task}/ready")
    async def model_ready(task: str):
        runtime.task(task)
        return {"name": task, "ready": True}

    @app.get("/v1/tasks")
    async def list_tasks():
        return {"backbone": {k: runtime.backbone_meta[k] for k in ("name", "sha256", "bytes", "params")},
                "backend": runtime.backend.name, "tasks": [runtime.task(t).to_json() for t in runtime.tasks]}

    @app.get("/metrics")
    async def prometheus():
        metrics.tasks.set(len(runtime.tasks))
        return Response(metrics.render(), media_type=metrics.content_type)

    # ------------------------------------------------------------------ model repository (load / unload)

    @app.post("/v2/repository/index")
    async def repository_index():
        loaded = set(runtime.tasks)
        return [{"name": t, "version": "1", "state": "READY" if t in loaded else "UNAVAILABLE"}
                for t in runtime.model_dir.task_names()]

    def _known(task: str) -> None:
        have = runtime.model_dir.task_names()
        if task not in have:
            raise UnknownTaskError(f"no task {task!r} in the model directory (tasks: {', '.join(have) or 'none'})")

    @app.post("/v2/repository/models/{task}/load")
    async def load_task(task: str):
        _known(task)
        if task not in runtime.tasks:
            await run_in_threadpool(runtime.add_task, task)  # the backbone stays; only the task is built
        return {}

    @app.post("/v2/repository/models/{task}/unload")
    async def unload_task(task: str):
        runtime.task(task)
        await run_in_threadpool(batcher.drop, task)  # what is queued for it is answered first
        await run_in_threadpool(runtime.remove_task, task)
        await run_in_threadpool(batcher.drop, task)  # a request that slipped in meanwhile gets a 404
        return {}

    # ------------------------------------------------------------------ inference

    async def infer_batch(task: str, x: np.ndarray) -> np.ndarray:
        return await asyncio.wrap_future(batcher.submit(task, x))

    @app.post("/v2/models/{task}/infer")
    async def infer(task: str, request: Request):
        runtime.task(task)
        metrics.requests.labels(task, "v2").inc()
        parsed = await run_in_threadpool(parse_json, await request.body())
        x = await run_in_threadpool(request_batch, runtime, task, parsed)
        logits = await infer_batch(task, x)
        body = await run_in_threadpool(response_body, runtime, task, parsed, logits)
        return Response(body, media_type="application/json")

    @app.post("/v1/tasks/{task}:predict")
    async def predict(task: str, request: Request, top_k: int = 5):
        runtime.task(task)
        metrics.requests.labels(task, "v1").inc()
        if not 1 <= top_k <= 1000:
            raise BadInputError(f"top_k must be between 1 and 1000, not {top_k}")
        data = await _upload(request)
        x = await run_in_threadpool(runtime.preprocess, task, data)
        logits = await infer_batch(task, x)
        p = runtime.decode(task, logits, top_k)[0]
        return {"task": task, "label": p.label,
                "top_k": [{"label": l, "index": i, "score": s} for l, i, s in zip(p.labels, p.indices, p.scores)]}

    return app


def _authorised(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), key.encode())


def _task_label(request: Request, runtime: Runtime) -> str | None:
    """The task a request was about, if it names a loaded one (bounded label values)."""
    parts = request.url.path.split("/")
    for prefix in (["", "v2", "models"], ["", "v1", "tasks"]):
        if parts[:3] == prefix and len(parts) > 3:
            name = parts[3].split(":")[0]
            return name if name in runtime.tasks else "unknown"
    return None


async def _upload(request: Request) -> bytes:
    """The image of a v1 predict call: a multipart 'file' field, or the raw body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise BadInputError("no file in the multipart form; send the image as the 'file' field")
        data = await files[0].read()
    else:
        data = await request.body()
    if not data:
        raise BadInputError("empty request body; send an image (PNG, JPEG, ...)")
    return data
