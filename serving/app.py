"""The HTTP server: KServe v2 / Triton inference protocol (JSON and binary tensor data), model configuration and
statistics, a convenience upload endpoint, and metrics; the gRPC endpoint (:mod:`tailorrt.serving.grpc_server`)
runs beside it over the same :class:`~tailorrt.serving.service.Service`.

Every task loaded in the :class:`tailorrt.Runtime` is a model; the model repository extension
(``/v2/repository/...``) loads and unloads the tasks of the model directory while serving, without
reloading the backbone. Errors are JSON ``{"error": "..."}``: unknown task 404, bad input 400, a body that
does not arrive in time 408, too large 413, overloaded 503 (with ``Retry-After``), missing or wrong API key
401, a task the model directory cannot load as asked (missing, corrupt, stale, another backbone) 409.
Requests are parsed, decoded and answered in worker threads; the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from tailorrt.errors import (
    BadInputError,
    InputTooLargeError,
    OverloadedError,
    RequestTimeoutError,
    TailorError,
)
from tailorrt.runtime import Runtime
from tailorrt.serving import routes
from tailorrt.serving.config import ServerConfig
from tailorrt.serving.protocol import InferRequest, InferResponse, http_response, parse_http
from tailorrt.serving.routes import inference_task
from tailorrt.serving.service import CLIENT_CLOSED, VERSION, Service, http_status, key_matches
from tailorrt.version import __version__

HEADER_LENGTH = "Inference-Header-Content-Length"
KEY_MISSING = "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')"


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
            await error_response(413, f"request body of {int(length):,} bytes is over the limit of {self.limit:,}",
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
                await error_response(http_status(failure), str(failure), close=True)(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if failure is None or started:
                raise
            await error_response(http_status(failure), str(failure), close=True)(scope, receive, send)


async def infer_answer(service: Service, config: ServerConfig, task: str, body: bytes, header_length: str | None,
                       encoding: str | None) -> tuple[bytes, int | None]:
    """A KServe v2 inference request's answer (its body and, for binary outputs, the JSON header's length); count
    it with :meth:`Service.call`."""

    def parse() -> tuple[InferRequest, bytes | None]:
        parsed, raws = parse_http(body, header_length, encoding, config.max_body_bytes)
        return parsed, raws[0]

    return await service.run_async(task, parse, lambda parsed, outs: http_response(task, parsed, outs),
                                   inline=len(body) <= INLINE_PARSE_BYTES and not encoding)


class InferRoute:
    """``POST /v2/models/{task}/infer``, the hot path, answered in plain ASGI ahead of FastAPI's routing and
    dependency solving; the same answers, errors and counts as the FastAPI route, which still serves the versioned
    path and documents both."""

    def __init__(self, app, service: Service, config: ServerConfig) -> None:
        self.app, self.service, self.config = app, service, config

    async def __call__(self, scope, receive, send) -> None:
        task = routes.infer_task(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if task is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["counted"] = True
        headers = dict(scope["headers"])
        try:
            with self.service.call(task, "v2"):
                body = await _body(receive)
                content, header = await infer_answer(self.service, self.config, task, body,
                                                     _text(headers.get(HEADER_LENGTH.lower().encode())),
                                                     _text(headers.get(b"content-encoding")))
        except ClientDisconnect:
            await Response(status_code=CLIENT_CLOSED)(scope, receive, send)  # nobody reads it; counted as 499
            return
        except TailorError as e:  # anything else goes on to the app's handler for Exception (500, logged)
            await error_response(http_status(e), str(e))(scope, receive, send)
            return
        await infer_response(content, header)(scope, receive, send)


def infer_response(content: bytes, header: int | None) -> Response:
    """An inference answer: JSON, or with binary outputs the JSON header's length in ``HEADER_LENGTH``."""
    if header is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header)})


async def _body(receive) -> bytes:
    """A request's whole body, from ASGI messages; ClientDisconnect if the client goes first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class Guard:
    """Plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` ran every request through a task and a stream):
    the API key, and the count of inference requests refused before their handler ran (key, body limits)."""

    def __init__(self, app, service: Service, api_key: str | None) -> None:
        self.app, self.service, self.api_key = app, service, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, path = time.perf_counter(), 500, scope["path"]

        async def noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if self.api_key and path not in routes.OPEN and not _carries_key(scope, self.api_key):
            await error_response(401, KEY_MISSING)(scope, receive, noting_status)
        else:
            await self.app(scope, receive, noting_status)
        task = inference_task(path)
        if task is not None and not scope.get("state", {}).get("counted"):  # refused before its handler ran
            self.service.refused(task, "v1" if path.startswith("/v1") else "v2", status, time.perf_counter() - start)


def authorised(request: Request, key: str) -> bool:
    """Whether ``request`` carries the API key ``key``."""
    return key_matches(key, request.headers.get("x-api-key"), request.headers.get("authorization"))


def _carries_key(scope, key: str) -> bool:
    headers = dict(scope["headers"])
    return key_matches(key, _text(headers.get(b"x-api-key")), _text(headers.get(b"authorization")))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def error_response(code: int, message: str, *, close: bool = False) -> JSONResponse:
    """An error as JSON ``{"error": ...}``: 503 with ``Retry-After``; ``close`` ends the connection."""
    headers = {"Retry-After": str(OverloadedError.retry_after_s)} if code == 503 else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=code, headers=headers)


INLINE_PARSE_BYTES = 64 * 1024  # bodies up to this size, not compressed, are parsed on the event loop (no thread hop)
# FastAPI's native OpenTelemetry, off: unconfigured, it still looked up three providers in os.environ on every
# request (a py-spy profile under load found it); tailorrt's metrics are Prometheus'
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False}


def create_app(runtime: Runtime, config: ServerConfig = ServerConfig(), *, on_demand: bool = False,
               folder: Path | None = None) -> FastAPI:
    """A FastAPI app serving ``runtime``'s tasks through the batcher; with ``config.grpc_port`` set, the gRPC
    endpoint runs beside it (started and stopped with the app, over the same :class:`Service`). ``on_demand``:
    one replica of a Ray deployment; ``folder``: one worker of ``tailor serve --workers N`` (see
    :class:`Service`)."""
    service = Service(runtime, config.batch, on_demand, folder)
    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        grpc_server = None
        if config.grpc_port is not None:
            from tailorrt.serving.grpc_server import start_grpc_server

            grpc_server = await run_in_threadpool(start_grpc_server, service, config)
        yield
        if grpc_server is not None:
            await run_in_threadpool(lambda: grpc_server.stop(config.grace_s).wait())
        await run_in_threadpool(service.close)  # in-flight requests have finished; drain what is queued

    app = FastAPI(title="tailorrt", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  telemetry=NO_TELEMETRY,
                  description=__doc__)
    app.state.service, app.state.runtime, app.state.batcher, app.state.metrics = (service, runtime, service.batcher,
                                                                                  metrics)
    app.add_middleware(InferRoute, service=service, config=config)  # inside the body limits and the key check
    app.add_middleware(BodyGuard, limit=config.max_body_bytes, timeout_s=config.body_timeout_s)
    app.add_middleware(Guard, service=service, api_key=config.api_key)

    @app.exception_handler(TailorError)
    async def tailorerror_response(_request: Request, e: TailorError):
        return error_response(http_status(e), str(e))

    @app.exception_handler(ClientDisconnect)
    async def disconnected(_request: Request, _e: ClientDisconnect):
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it; counted as 499, not logged as a crash

    @app.exception_handler(RequestValidationError)
    async def validationerror_response(_request: Request, e: RequestValidationError):
        return error_response(400, f"invalid request: {e.errors()[0].get('msg', e)}")

    @app.exception_handler(StarletteHTTPException)
    async def httperror_response(_request: Request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def internalerror_response(_request: Request, e: Exception):
        return error_response(500, f"internal error: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ health and metadata

    @app.get(routes.LIVE)
    async def live():
        return {"live": True}

    @app.get(routes.READY)
    async def ready():
        ok = service.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get(routes.SERVER)
    async def server_metadata():
        return service.server_metadata()

    @app.get(routes.MODELS)
    async def models():
        return {"models": [{"name": t, "versions": [VERSION], "state": "READY"} for t in service.models()]}

    @app.get(routes.STATS)
    async def all_statistics():
        return service.statistics()

    def model_ready(task: str, version: str = "") -> dict:
        service.check(task, version)
        return {"name": task, "ready": True}

    answers = {"": service.model_metadata, "/ready": model_ready, "/config": service.model_config,
               "/stats": service.statistics}
    for suffix in routes.MODEL_SUFFIXES:
        _per_task_get(app, suffix, answers[suffix])

    @app.get(routes.TASKS)
    async def list_tasks():
        return await run_in_threadpool(service.task_list)

    @app.get(routes.METRICS)
    async def prometheus():
        metrics.tasks.set(len(runtime.tasks))
        return Response(metrics.render(), media_type=metrics.content_type)

    # ------------------------------------------------------------------ model repository (load / unload)

    @app.post(routes.REPOSITORY_INDEX)
    async def repository_index():
        return service.repository_index()

    @app.post(routes.LOAD)
    async def load_task(task: str):
        await run_in_threadpool(service.load, task)
        return {}

    @app.post(routes.UNLOAD)
    async def unload_task(task: str):
        await run_in_threadpool(service.unload, task)
        return {}

    # ------------------------------------------------------------------ inference

    @app.post(routes.INFER, responses=INFER_RESPONSES)
    @app.post(routes.INFER_VERSION, responses=INFER_RESPONSES)
    async def infer(task: str, request: Request, version: str = ""):
        """KServe v2 inference: a JSON request, or a JSON header of ``Inference-Header-Content-Length`` bytes
        followed by the inputs' binary data (Triton's binary tensor data extension); gzip or deflate
        ``Content-Encoding`` as tritonclient sends it."""
        request.state.counted = True
        with service.call(task, "v2", version):
            body = await request.body()
            content, header = await infer_answer(service, config, task, body, request.headers.get(HEADER_LENGTH),
                                                 request.headers.get("content-encoding"))
        return infer_response(content, header)

    @app.post(routes.PREDICT)
    async def predict(task: str, request: Request, top_k: int = 5):
        request.state.counted = True
        with service.call(task, "v1"):
            if not 1 <= top_k <= 1000:
                raise BadInputError(f"top_k must be between 1 and 1000, not {top_k}")
            return await service.predict_async(task, await _upload(request), top_k)

    app.openapi = lambda: _openapi(app)
    return app


def _per_task_get(app: FastAPI, suffix: str, answer) -> None:
    """``GET /v2/models/{task}{suffix}`` and its ``/versions/{version}`` form, answered by ``answer(task, version)``."""

    async def endpoint(task: str, version: str = ""):
        return answer(task, version)

    for path in (routes.MODEL + suffix, routes.MODEL_VERSION + suffix):
        app.add_api_route(path, endpoint, methods=["GET"], name=f"model{suffix.replace('/', '_') or '_metadata'}")


INFER_RESPONSES = {200: {"model": InferResponse, "description": "The outputs (JSON; with binary outputs, the "
                         "JSON header is followed by their bytes and its length is in Inference-Header-"
                         "Content-Length)"}}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with the infer endpoints' request body (read by hand, for the binary extension)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    defs = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(defs.pop("$defs", {}))
    components["InferRequest"] = defs
    body = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}, "description": (
            "An InferRequest JSON header of Inference-Header-Content-Length bytes, then each input's "
            "binary_data_size bytes")}}}
    for path, item in schema["paths"].items():
        if path.endswith("/infer"):
            item["post"]["requestBody"] = body
    app.openapi_schema = schema
    return schema


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
