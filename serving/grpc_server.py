"""The KServe v2 / Triton gRPC endpoint (``inference.GRPCInferenceService``), beside the HTTP server in the same
process and over the same :class:`~tailorrt.serving.service.Service` (one runtime, one batcher, one set of
counters).

The message classes and the service come from Triton's published protocol, ``grpc_service.proto`` and
``model_config.proto`` of github.com/triton-inference-server/common (``protobuf/``), as the official client
package ``tritonclient[grpc]`` ships them compiled (:mod:`tailorrt.serving.triton_grpc`): nothing is written by
hand, and the serving install does without the client package. Implemented: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelStatistics, ModelInfer (``raw_input_contents``
or typed contents; outputs as ``raw_output_contents``; the classification extension), RepositoryIndex,
RepositoryModelLoad and RepositoryModelUnload; the rest (streaming, shared memory, trace and log settings)
answer UNIMPLEMENTED.

Errors map to status codes: unknown task NOT_FOUND, bad input INVALID_ARGUMENT, a full queue or an input over
a limit RESOURCE_EXHAUSTED (as is a message over ``max_body_bytes``, refused by gRPC itself), a task the model
directory cannot load FAILED_PRECONDITION, a missing or wrong API key UNAUTHENTICATED.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf import json_format

from tailorrt.errors import BadInputError, ConfigError
from tailorrt.serving.config import ServerConfig
from tailorrt.serving.connections import address
from tailorrt.serving.protocol import VERSION, InferRequest, validate_request
from tailorrt.serving.service import Service, http_status, key_matches
from tailorrt.serving.triton_grpc import protocol

OPEN_METHODS = ("ServerLive", "ServerReady")
_CONTENTS = {"BYTES": "bytes_contents", "UINT8": "uint_contents", "FP32": "fp32_contents"}


def _answers_errors(method):
    """Turn an error into the call's gRPC status (the process and the other calls go on)."""

    @functools.wraps(method)
    def call(self, request, context):
        try:
            return method(self, request, context)
        except Exception as e:  # noqa: BLE001 - every error becomes a status, never a dead server
            if http_status(e) == 500:  # not an error of ours: a bug, said as one
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
            context.abort(getattr(grpc.StatusCode, e.grpc_code), str(e))

    return call


def _value(p: Any) -> Any:  # an InferParameter
    choice = p.WhichOneof("parameter_choice")
    return getattr(p, choice) if choice else None


def _parameters(params) -> dict[str, Any]:
    return {k: _value(v) for k, v in params.items()}


def infer_request(msg: Any) -> tuple[InferRequest, bytes | None]:  # a ModelInferRequest
    """The request as the HTTP side sees it, and its one input's raw bytes (None for typed contents)."""
    if msg.raw_input_contents and len(msg.raw_input_contents) != len(msg.inputs):
        raise BadInputError(f"{len(msg.raw_input_contents)} raw_input_contents for {len(msg.inputs)} inputs; send "
                            "one per input, or typed contents for all")
    inputs = []
    for t in msg.inputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                                 "parameters": _parameters(t.parameters)}
        given = {f.name: v for f, v in t.contents.ListFields()}
        if msg.raw_input_contents and given:
            raise BadInputError(f"input {t.name!r} has both typed contents and raw_input_contents; send one")
        if not msg.raw_input_contents:
            field = _CONTENTS.get(t.datatype)
            if set(given) - {field}:
                raise BadInputError(f"{t.datatype} contents go in {field or 'a field of their type'}, not "
                                    f"{', '.join(given)}")
            entry["data"] = list(given.get(field, []))
        inputs.append(entry)
    outputs = [{"name": o.name, "parameters": _parameters(o.parameters)} for o in msg.outputs] or None
    request = validate_request({"id": msg.id or None, "inputs": inputs, "outputs": outputs,
                                "parameters": _parameters(msg.parameters)})
    return request, (msg.raw_input_contents[0] if msg.raw_input_contents else None)


class InferenceServicer:
    """``inference.GRPCInferenceService`` over a :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service

    @_answers_errors
    def ServerLive(self, request, context):
        return protocol().ServerLiveResponse(live=True)

    @_answers_errors
    def ServerReady(self, request, context):
        return protocol().ServerReadyResponse(ready=self.service.ready())

    @_answers_errors
    def ModelReady(self, request, context):
        return protocol().ModelReadyResponse(ready=self.service.model_ready(request.name, request.version))

    @_answers_errors
    def ServerMetadata(self, request, context):
        return json_format.ParseDict(self.service.server_metadata(), protocol().ServerMetadataResponse(),
                                     ignore_unknown_fields=True)

    @_answers_errors
    def ModelMetadata(self, request, context):
        return json_format.ParseDict(self.service.model_metadata(request.name, request.version),
                                     protocol().ModelMetadataResponse(), ignore_unknown_fields=True)

    @_answers_errors
    def ModelConfig(self, request, context):
        config = json_format.ParseDict(self.service.model_config(request.name, request.version),
                                       protocol().ModelConfig())
        return protocol().ModelConfigResponse(config=config)

    @_answers_errors
    def ModelStatistics(self, request, context):
        return json_format.ParseDict(self.service.statistics(request.name, request.version),
                                     protocol().ModelStatisticsResponse())

    @_answers_errors
    def RepositoryIndex(self, request, context):
        index = self.service.repository_index()
        if request.ready:
            index = [m for m in index if m["state"] == "READY"]
        return json_format.ParseDict({"models": index}, protocol().RepositoryIndexResponse())

    @_answers_errors
    def RepositoryModelLoad(self, request, context):
        self.service.load(request.model_name)
        return protocol().RepositoryModelLoadResponse()

    @_answers_errors
    def RepositoryModelUnload(self, request, context):
        self.service.unload(request.model_name)
        return protocol().RepositoryModelUnloadResponse()

    @_answers_errors
    def ModelInfer(self, request, context):
        task = request.model_name
        with self.service.call(task, "grpc", request.model_version):
            started = time.perf_counter()
            parsed, raw = infer_request(request)
            outs = self.service.run(task, parsed, raw, binary=True, started=started)
        return protocol().ModelInferResponse(
            model_name=task, model_version=VERSION, id=request.id,
            outputs=[protocol().ModelInferResponse.InferOutputTensor(name=o.name, datatype=o.datatype, shape=o.shape)
                     for o in outs],
            raw_output_contents=[o.raw() for o in outs])


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Refuse every call but the health checks without the key in the metadata (``x-api-key: KEY`` or
    ``authorization: Bearer KEY``)."""

    def __init__(self, key: str, service: Service) -> None:
        self.key, self.service = key, service

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.rsplit("/", 1)[-1] in OPEN_METHODS:
            return handler
        metadata = dict(details.invocation_metadata or ())
        if key_matches(self.key, metadata.get("x-api-key"), metadata.get("authorization")):
            return handler
        message = "missing or wrong API key (send metadata 'authorization: Bearer KEY' or 'x-api-key: KEY')"

        def deny(request, context):
            if details.method.endswith("/ModelInfer"):  # counted as the HTTP server counts its 401s
                self.service.refused(request.model_name, "grpc", 401)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if handler.request_streaming or handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def start_grpc_server(service: Service, config: ServerConfig) -> grpc.Server:
    """Start the gRPC endpoint on ``config.grpc_host:config.grpc_port``: ``config.grpc_workers`` calls run at once
    (each waits for its batch in a thread), up to twice that many are accepted, messages are limited to
    ``config.max_body_bytes``."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.grpc_workers, thread_name_prefix="grpc"),
        interceptors=[ApiKeyInterceptor(config.api_key, service)] if config.api_key else [],
        options=[("grpc.max_receive_message_length", config.max_body_bytes),
                 ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", int(config.workers > 1))],
        maximum_concurrent_rpcs=2 * config.grpc_workers)
    server.add_generic_rpc_handlers((protocol().handler(InferenceServicer(service)),))
    where = address(config.grpc_host, config.grpc_port)
    try:
        server.add_insecure_port(where)
    except RuntimeError as e:
        raise ConfigError(f"cannot listen for gRPC on {where}: {e}") from None
    server.start()
    return server
