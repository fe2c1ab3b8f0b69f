"""The KServe v2 / Triton gRPC protocol's messages and service, built from Triton's own descriptors without the
``tritonclient`` package (which brings ``ml_dtypes``, ``python-rapidjson`` and ``urllib3``, about 35 MB of a
serving install, for three generated modules).

``serving/triton/*.desc`` are the serialized ``FileDescriptorProto`` of ``model_config.proto`` and
``grpc_service.proto`` (github.com/triton-inference-server/common, ``protobuf/``; BSD-3-Clause, NVIDIA), exactly as
``tritonclient[grpc]`` 2.73.0 ships them compiled; ``tests/test_wire.py`` holds them equal to the installed
client's, and rewrites them with ``python -m tailorrt.serving.triton_grpc`` where tritonclient is installed. They
load into a pool of their own, so a process that imports tritonclient too (a test, an app) holds both without a
clash in protobuf's default pool.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"
FILES = {"model_config.desc": "model_config_pb2", "grpc_service.desc": "service_pb2"}  # dependency first


class Protocol:
    """The protocol's message classes by name (``protocol().ModelInferRequest``) and its service."""

    def __init__(self) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        folder = resources.files("tailorrt.serving") / "triton"
        for name in FILES:
            self.pool.AddSerializedFile(folder.joinpath(name).read_bytes())
        self.service = self.pool.FindServiceByName(SERVICE)

    def __getattr__(self, name: str) -> type:
        try:
            descriptor = self.pool.FindMessageTypeByName(f"inference.{name}")
        except KeyError:
            raise AttributeError(f"the Triton protocol has no message {name!r}") from None
        return message_factory.GetMessageClass(descriptor)

    def handler(self, servicer: Any) -> grpc.GenericRpcHandler:
        """The service's handler over ``servicer``'s methods (named as the service's); methods it lacks answer
        UNIMPLEMENTED, as the generated servicer base class does."""
        handlers = {}
        for method in self.service.methods:
            request = message_factory.GetMessageClass(method.input_type)
            response = message_factory.GetMessageClass(method.output_type)
            behaviour = getattr(servicer, method.name, None) or _unimplemented(method.name)
            make = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
            handlers[method.name] = make(behaviour, request_deserializer=request.FromString,
                                         response_serializer=response.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


_HANDLER_KINDS = {(False, False): grpc.unary_unary_rpc_method_handler,
                  (False, True): grpc.unary_stream_rpc_method_handler,
                  (True, False): grpc.stream_unary_rpc_method_handler,
                  (True, True): grpc.stream_stream_rpc_method_handler}


def _unimplemented(name: str) -> Callable:
    def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented")

    return behaviour


@functools.cache
def protocol() -> Protocol:
    """The protocol, built once per process (the pool and classes are immutable)."""
    return Protocol()


def write_descriptors() -> None:
    """Rewrite ``serving/triton/*.desc`` from the installed ``tritonclient`` (after upgrading it)."""
    import importlib

    folder = resources.files("tailorrt.serving") / "triton"
    for name, module in FILES.items():
        pb2 = importlib.import_module(f"tritonclient.grpc.{module}")
        with resources.as_file(folder.joinpath(name)) as path:
            path.write_bytes(pb2.DESCRIPTOR.serialized_pb)


if __name__ == "__main__":
    write_descriptors()
