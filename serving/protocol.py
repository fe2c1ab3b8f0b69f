"""The KServe v2 / Triton inference request and response, declared and checked before any work is spent on them.

A request arrives as JSON (:func:`parse_json`), as JSON followed by raw tensor bytes (Triton's binary tensor data
extension, :func:`parse_http`), or as a gRPC ``ModelInferRequest`` that :mod:`tailorrt.serving.grpc_server`
turns into the same :class:`InferRequest` plus raw bytes. Types are strict (a ``true`` is not a number, a shape
holds at most 8 non-negative integers, at most one input and two outputs), and :func:`request_batch` turns the
one input into the task's batch, checking sizes with exact integer arithmetic before allocating anything. Every
refusal is a :class:`~tailorrt.errors.BadInputError` (400) or :class:`~tailorrt.errors.InputTooLargeError` (413).

A task has three inputs, one per way of sending an image, each with its own name:

- ``image`` (BYTES): encoded images (PNG, JPEG, ...), shape ``[N]`` or ``[N,1]``; base64 strings in JSON,
  4-byte little-endian length + bytes per element in binary data;
- ``pixels`` (UINT8): ``[N,H,W,C]`` (or ``[H,W,C]``) pixels, C in 1/3/4;
- ``input`` (FP32): the preprocessed ``[N,3,S,S]`` tensor.

Outputs are ``logits`` and ``probabilities`` (FP32 ``[N,K]``), or with the classification extension the top-k
classes as BYTES ``"score:index:label"`` strings ``[N,k]``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from tailorrt.errors import BadInputError, InputTooLargeError
from tailorrt.runtime import Runtime, softmax

MAX_DIMS = 8
VERSION = "1"  # every task has one version
OUTPUTS = ("logits", "probabilities")
INPUTS = {"image": "BYTES", "pixels": "UINT8", "input": "FP32"}  # input name -> its datatype
ITEM_BYTES = {"UINT8": 1, "FP32": 4}
_LENGTH = struct.Struct("<I")


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    classification: Annotated[StrictInt, Field(ge=1, le=1000)] | None = Field(
        None, description="Return the top-k classes as 'score:index:label' strings instead of the tensor.")
    binary_data: StrictBool | None = Field(None, description="Return this output as raw bytes after the JSON "
                                           "header (binary tensor data extension).")


class RequestedOutput(BaseModel):
    name: Literal["logits", "probabilities"]
    parameters: OutputParameters | None = None


class InputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data_size: Annotated[StrictInt, Field(ge=0)] | None = Field(
        None, description="The input's data is this many raw bytes after the JSON header (instead of 'data').")


class InferInput(BaseModel):
    name: Literal["image", "pixels", "input"] = Field(
        description="image (BYTES: encoded images), pixels (UINT8: [N,H,W,C]) or input (FP32: [N,3,S,S])")
    datatype: Literal["BYTES", "UINT8", "FP32"]
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(min_length=1, max_length=MAX_DIMS)
    data: list[Any] | None = Field(None, description="values, flat in row-major order or nested as the shape says; "
                                   "BYTES as base64 strings. Absent when the data is binary.")
    parameters: InputParameters | None = None

    @model_validator(mode="after")
    def _named_for_its_type(self) -> InferInput:
        if INPUTS[self.name] != self.datatype:
            raise ValueError(f"input {self.name!r} is {INPUTS[self.name]}, not {self.datatype} (the inputs: "
                             + ", ".join(f"{n} {t}" for n, t in INPUTS.items()) + ")")
        return self

    @property
    def binary_size(self) -> int | None:
        return self.parameters.binary_data_size if self.parameters else None


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data_output: StrictBool = Field(False, description="Return every output as raw bytes (binary tensor "
                                           "data extension) unless the output says otherwise.")


class InferRequest(BaseModel):
    id: str | None = Field(None, max_length=256)
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = Field(None, min_length=1, max_length=len(OUTPUTS))
    parameters: RequestParameters | None = None

    @field_validator("outputs")
    @classmethod
    def _distinct(cls, outputs: list[RequestedOutput] | None) -> list[RequestedOutput] | None:
        if outputs is not None and len({o.name for o in outputs}) != len(outputs):
            raise ValueError("each output may be named once")
        return outputs


class OutputTensor(BaseModel):
    name: str
    datatype: Literal["FP32", "BYTES"]
    shape: list[int]
    data: list[float | str] | None = Field(None, description="absent when the output is binary")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size of a binary output")


class InferResponse(BaseModel):
    """The JSON of an answer (followed by raw output bytes when the request asked for binary outputs)."""

    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]


@dataclass
class Output:
    """One computed output, whatever the transport: FP32 values or BYTES elements."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]
    binary: bool

    def raw(self) -> bytes:
        """The output as binary tensor data."""
        if self.datatype == "BYTES":
            return pack_bytes(self.values)
        return np.ascontiguousarray(self.values, dtype="<f4").tobytes()

    def json_data(self) -> list:
        if self.datatype == "BYTES":
            return [v.decode() for v in self.values]
        return [round(float(v), 7) for v in np.asarray(self.values).reshape(-1)]


def validate_request(body: Any) -> InferRequest:
    """The request in a decoded JSON (or gRPC-converted) body, or a 400 naming the first problem."""
    if not isinstance(body, dict):
        raise BadInputError("the inference request must be a JSON object")
    try:
        return InferRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise BadInputError(f"invalid inference request: {where}: {first['msg']}") from None


def parse_json(raw: bytes | memoryview) -> InferRequest:
    """The request in ``raw`` (run it in a worker thread: parsing a large body takes time)."""
    if not raw:
        raise BadInputError("empty request body; send a KServe v2 inference request (JSON)")
    try:
        body = json.loads(bytes(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"the body is not valid JSON: {e}") from e
    except RecursionError:
        raise BadInputError("the body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # an integer literal of more digits than Python converts
        raise BadInputError(f"the body holds a number that cannot be read: {e}") from e
    return validate_request(body)


def decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding`` (gzip or deflate, as ``tritonclient`` compresses requests),
    refused as soon as it would grow past ``limit`` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadInputError(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadInputError(f"the {encoding} body cannot be decompressed: {e}") from e
    if len(out) > limit or inflater.unconsumed_tail:
        raise InputTooLargeError(f"the {encoding} body decompresses to over the limit of {limit:,} bytes")
    if not inflater.eof:
        raise BadInputError(f"the {encoding} body is truncated")
    return out


def parse_http(body: bytes, header_length: str | None, encoding: str | None = None, limit: int = 16 * 1024 * 1024
               ) -> tuple[InferRequest, list[bytes | None]]:
    """A request over HTTP: JSON only, or (with ``Inference-Header-Content-Length``) a JSON header followed by
    each binary input's ``binary_data_size`` bytes, in input order; compressed as ``encoding`` says, to at most
    ``limit`` bytes. Returns the request and each input's raw bytes (None for an input given as JSON data)."""
    body = decompressed(body, encoding, limit)
    if header_length is None:
        header, rest = parse_json(body), memoryview(b"")
    else:
        if not header_length.strip().isdigit():
            raise BadInputError(f"Inference-Header-Content-Length must be a byte count, not {header_length!r}")
        n = int(header_length)
        if n > len(body):
            raise BadInputError(f"Inference-Header-Content-Length is {n:,} bytes, longer than the body of "
                                f"{len(body):,}")
        view = memoryview(body)
        header, rest = parse_json(view[:n]), view[n:]
    return header, split_binary(header, rest)


def split_binary(request: InferRequest, rest: memoryview) -> list[bytes | None]:
    """Each input's slice of the binary data after the header; the sizes must add up to exactly its length."""
    raws, offset = [], 0
    for inp in request.inputs:
        size = inp.binary_size
        if size is None:
            if inp.data is None:
                raise BadInputError(f"input {inp.name!r} has neither 'data' nor a binary_data_size parameter")
            raws.append(None)
            continue
        if inp.data is not None:
            raise BadInputError(f"input {inp.name!r} has both 'data' and binary data; send one")
        if offset + size > len(rest):
            raise BadInputError(f"input {inp.name!r} declares {size:,} bytes of binary data, but the body holds "
                                f"{len(rest) - offset:,} after the JSON header")
        raws.append(bytes(rest[offset:offset + size]))
        offset += size
    if offset != len(rest):
        raise BadInputError(f"the body holds {len(rest) - offset:,} bytes after the JSON header and the inputs' "
                            "binary data (binary_data_size does not add up)")
    return raws


def declared_images(runtime: Runtime, request: InferRequest) -> int:
    """The images the request's one input declares, checked against the limits before anything is decoded: a
    BYTES element is an image, a UINT8 or FP32 tensor holds its first dimension's (one if it has no batch
    dimension)."""
    inp = request.inputs[0]
    want = math.prod(inp.shape)  # exact: no wrap-around however large the dimensions
    limits = runtime.limits
    if inp.datatype == "BYTES":
        if want > limits.max_images:
            raise InputTooLargeError(f"{want:,} images in one request; the limit is {limits.max_images}")
        return want
    if want > limits.max_images * limits.max_pixels * 4:
        raise InputTooLargeError(f"shape {inp.shape} holds {want:,} values, over the request limit")
    if want == 0:
        raise BadInputError(f"shape {inp.shape} holds no values: send at least one image")
    return inp.shape[0] if len(inp.shape) == 4 else 1


def request_batch(runtime: Runtime, task: str, request: InferRequest, raw: bytes | None = None) -> np.ndarray:
    """The task's preprocessed ``[N,3,S,S]`` batch from the request's one input (``raw``: its binary data)."""
    declared_images(runtime, request)
    inp = request.inputs[0]
    want = math.prod(inp.shape)
    if inp.datatype == "BYTES":
        if raw is not None:
            return runtime.preprocess(task, unpack_bytes(raw, want))
        return runtime.preprocess(task, [_element(v) for v in _flatten(inp.data, len(inp.shape), want)])
    if raw is not None:
        if len(raw) != want * ITEM_BYTES[inp.datatype]:
            raise BadInputError(f"shape {inp.shape} of {inp.datatype} needs {want * ITEM_BYTES[inp.datatype]:,} "
                                f"bytes of binary data, not {len(raw):,}")
        arr = np.frombuffer(raw, np.uint8 if inp.datatype == "UINT8" else np.dtype("<f4"))
    else:
        arr = _numbers(_flatten(inp.data, len(inp.shape), want), inp.datatype)
    return runtime.preprocess(task, arr.reshape(inp.shape))


def unpack_bytes(raw: bytes, count: int) -> list[bytes]:
    """``count`` BYTES elements, each a 4-byte little-endian length and that many bytes, filling ``raw`` exactly."""
    items, offset = [], 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise BadInputError(f"BYTES binary data ends before element {i} of {count} (its length prefix)")
        (n,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise BadInputError(f"BYTES element {i} claims {n:,} bytes, past the end of its binary data")
        items.append(raw[offset:offset + n])
        offset += n
    if offset != len(raw):
        raise BadInputError(f"BYTES binary data holds {len(raw) - offset:,} bytes after its {count} elements")
    return items


def pack_bytes(items: list[bytes]) -> bytes:
    """BYTES elements as binary tensor data (4-byte little-endian length, then the bytes)."""
    return b"".join(_LENGTH.pack(len(b)) + b for b in items)


def _flatten(data: list, depth: int, want: int) -> list:
    """The values of ``data``, flat or nested at most ``depth`` lists deep, which must number ``want``."""
    level = [data]
    for _ in range(depth + 1):  # one list per level; lists left after the last one are nested too deep
        nested = [item for item in level if isinstance(item, list)]
        if not nested:
            break
        if len(nested) != len(level):
            raise BadInputError("input 'data' mixes lists and values at one level; send it flat or nested evenly")
        level = [v for item in nested for v in item]
        if len(level) > want:  # already too many (lists may remain): the count below refuses it
            break
    else:
        raise BadInputError(f"input 'data' is nested deeper than its shape of {depth} dimensions")
    if len(level) != want:
        raise BadInputError(f"the shape needs {want:,} values, and 'data' does not hold that many (flat or "
                            "nested as the shape says)")
    return level


def _numbers(values: list, datatype: str) -> np.ndarray:
    """UINT8 values must be integers in 0..255; FP32 values finite numbers (checked again after conversion)."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInputError(f"input data is not a list of {datatype} numbers: {e}") from e
    if datatype == "UINT8":
        if arr.dtype.kind not in "iu":
            raise BadInputError("UINT8 data must be integers (no fractions, strings, booleans or nulls)")
        if arr.min() < 0 or arr.max() > 255:
            raise BadInputError("UINT8 values must lie in 0..255")
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise BadInputError("FP32 data must be numbers (no strings, booleans or nulls)")
    with np.errstate(over="ignore"):
        return arr.astype(np.float32)  # out of float32's range becomes inf, refused as not finite


def _element(item: Any) -> bytes:
    """One encoded image: base64 text in JSON, bytes as they are in gRPC's typed contents."""
    if isinstance(item, bytes):
        return item
    if not isinstance(item, str):
        raise BadInputError("BYTES data must be base64-encoded strings of encoded images")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadInputError(f"BYTES data is not valid base64: {e}") from e


def outputs(runtime: Runtime, task: str, request: InferRequest, logits: np.ndarray, binary: bool = False
            ) -> list[Output]:
    """The outputs a request asked for (every output if none), binary where asked (or for all if ``binary``)."""
    n, k = logits.shape
    default = binary or bool(request.parameters and request.parameters.binary_data_output)
    result = []
    for out in request.outputs or [RequestedOutput(name=name) for name in OUTPUTS]:
        params = out.parameters or OutputParameters()
        as_binary = binary or (default if params.binary_data is None else params.binary_data)
        if params.classification is not None:
            rows = runtime.decode(task, logits, params.classification)
            values = [f"{s:.6f}:{i}:{l}".encode() for p in rows for l, i, s in zip(p.labels, p.indices, p.scores)]
            result.append(Output(out.name, "BYTES", [n, min(params.classification, k)], values, as_binary))
            continue
        values = softmax(logits.astype(np.float64)) if out.name == "probabilities" else logits
        result.append(Output(out.name, "FP32", [n, k], values.astype(np.float32), as_binary))
    return result


def http_response(task: str, request: InferRequest, outs: list[Output]) -> tuple[bytes, int | None]:
    """The HTTP answer: JSON, or a JSON header followed by the binary outputs (and the header's length)."""
    tensors, blobs = [], []
    for out in outs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            blob = out.raw()
            blobs.append(blob)
            entry["parameters"] = {"binary_data_size": len(blob)}
        else:
            entry["data"] = out.json_data()
        tensors.append(entry)
    header = json.dumps({"model_name": task, "model_version": VERSION, "id": request.id or "",
                         "outputs": tensors}).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
