"""The HTTP server: KServe v2 / Triton inference protocol, a convenience upload endpoint, and metrics.

Every task loaded in the :class:`tailorrt.Runtime` is a model; the model repository extension
(``/v2/repository/...``) loads and unloads the tasks of the model directory while serving, without
reloading the backbone. Errors are JSON ``{"error": "..."}``: unknown task 404, bad input 400, too large
413, overloaded 503, missing or wrong API key 401, a task the model directory cannot load as asked 409.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
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
    BadInputError,
    InputTooLargeError,
    OverloadedError,
    PackError,
    TailorError,
    UnknownTaskError,
)
from tailorrt.runtime import Runtime, softmax
from tailorrt.serving.batcher import BatchConfig, Batcher
from tailorrt.serving.metrics import Metrics

# PackError: the model directory cannot give what was asked (say, a task exported before its pack changed)
STATUS = {UnknownTaskError: 404, BadInputError: 400, InputTooLargeError: 413, OverloadedError: 503, PackError: 409}
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and access of one server."""

    max_body_bytes: int = 16 * 1024 * 1024
    api_key: str | None = None
    batch: BatchConfig = BatchConfig()


class Unauthorized(TailorError):
    """Missing or wrong API key (HTTP 401)."""


def _status(e: Exception) -> int:
    for cls, code in STATUS.items():
        if isinstance(e, cls):
            return code
    return 401 if isinstance(e, Unauthorized) else 500


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit, by Content-Length or while they stream in."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = _error(413, f"request body of {int(length):,} bytes is over the limit of {self.limit:,}")
            await response(scope, receive, send)
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise InputTooLargeError(f"request body is over the limit of {self.limit:,} bytes")
            return message

        await self.app(scope, limited, send)


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=code)


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
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

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
        body = await _json_body(request)
        x, outputs = await run_in_threadpool(_parse_infer, runtime, task, body)
        logits = await infer_batch(task, x)
        return {"model_name": task, "model_version": "1", "id": body.get("id", ""),
                "outputs": _infer_outputs(runtime, task, logits, outputs)}

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


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    if not raw:
        raise BadInputError("empty request body; send a KServe v2 inference request (JSON)")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"the body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise BadInputError("the inference request must be a JSON object")
    return body


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


def _parse_infer(runtime: Runtime, task: str, body: dict) -> tuple[np.ndarray, list[dict]]:
    """The preprocessed batch and the requested outputs of a v2 inference request."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadInputError("'inputs' must be a list holding exactly one input (BYTES images, UINT8 or FP32 tensor)")
    inp = inputs[0]
    dtype, shape, data = inp.get("datatype"), inp.get("shape"), inp.get("data")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadInputError("input 'shape' must be a list of non-negative integers")
    if not isinstance(data, list):
        raise BadInputError("input 'data' must be a list")
    if dtype == "BYTES":
        images = [_b64(item) for item in _flatten(data)]
        if int(np.prod(shape)) != len(images):
            raise BadInputError(f"shape {shape} does not match the {len(images)} images sent")
        x = runtime.preprocess(task, images)
    elif dtype in ("UINT8", "FP32"):
        try:
            arr = np.asarray(data, dtype=np.float64 if dtype == "FP32" else np.int64)
        except (ValueError, TypeError) as e:
            raise BadInputError(f"input data is not a regular {dtype} array: {e}") from e
        if arr.size != int(np.prod(shape)):
            raise BadInputError(f"shape {shape} needs {int(np.prod(shape))} values, {arr.size} were sent")
        if arr.size > runtime.limits.max_pixels * 3:
            raise InputTooLargeError("tensor over the pixel limit")
        if dtype == "UINT8" and arr.size and (arr.min() < 0 or arr.max() > 255):
            raise BadInputError("UINT8 values must lie in 0..255")
        x = runtime.preprocess(task, arr.astype(np.float32 if dtype == "FP32" else np.uint8).reshape(shape))
    else:
        raise BadInputError(f"input datatype must be BYTES, UINT8 or FP32, not {dtype!r}")
    outputs = body.get("outputs") or [{"name": "logits"}, {"name": "probabilities"}]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and o.get("name") in ("logits", "probabilities")
                                                for o in outputs):
        raise BadInputError("'outputs' may name only 'logits' and 'probabilities'")
    for out in outputs:  # checked before any inference is spent on the request
        top = (out.get("parameters") or {}).get("classification")
        if top is not None and (not isinstance(top, int) or top < 1):
            raise BadInputError("'classification' must be a positive integer")
    return x, outputs


def _flatten(data: list) -> list:
    out = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def _b64(item) -> bytes:
    if not isinstance(item, str):
        raise BadInputError("BYTES data must be base64-encoded strings of encoded images")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadInputError(f"BYTES data is not valid base64: {e}") from e


def _infer_outputs(runtime: Runtime, task: str, logits: np.ndarray, outputs: list[dict]) -> list[dict]:
    """The response's outputs (requests already validated by :func:`_parse_infer`)."""
    n, k = logits.shape
    result = []
    for out in outputs:
        name = out["name"]
        top = (out.get("parameters") or {}).get("classification")
        if top is not None:
            rows = runtime.decode(task, logits, top)
            data = [f"{s:.6f}:{i}:{l}" for p in rows for l, i, s in zip(p.labels, p.indices, p.scores)]
            result.append({"name": name, "datatype": "BYTES", "shape": [n, min(top, k)], "data": data})
            continue
        values = softmax(logits.astype(np.float64)) if name == "probabilities" else logits
        result.append({"name": name, "datatype": "FP32", "shape": [n, k],
                       "data": [round(float(v), 7) for v in values.reshape(-1)]})
    return result
