"""The KServe v2 inference request, declared and checked before any work is spent on it.

A request is parsed off the event loop (:func:`parse_json`), validated against :class:`InferRequest`
(types are strict: a ``true`` is not a number, a shape holds at most 8 non-negative integers, at most one
input and two outputs), and turned into the task's input batch by :func:`request_batch`, which checks sizes
with exact integer arithmetic before allocating anything. Every refusal is a
:class:`~tailorrt.errors.BadInputError` (400) or :class:`~tailorrt.errors.InputTooLargeError` (413).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from tailorrt.errors import BadInputError, InputTooLargeError
from tailorrt.runtime import Runtime, softmax

MAX_DIMS = 8
OUTPUTS = ("logits", "probabilities")


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    classification: Annotated[StrictInt, Field(ge=1, le=1000)] | None = Field(
        None, description="Return the top-k classes as 'score:index:label' strings instead of the tensor.")


class RequestedOutput(BaseModel):
    name: Literal["logits", "probabilities"]
    parameters: OutputParameters | None = None


class InferInput(BaseModel):
    name: str = Field(max_length=64, description="image (BYTES), pixels (UINT8) or input (FP32); not checked")
    datatype: Literal["BYTES", "UINT8", "FP32"] = Field(
        description="BYTES: base64-encoded images; UINT8: [N,H,W,C] pixels; FP32: the preprocessed [N,3,S,S] input")
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(min_length=1, max_length=MAX_DIMS)
    data: list[Any] = Field(description="values, flat in row-major order or nested as the shape says")
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = Field(None, max_length=256)
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = Field(None, min_length=1, max_length=len(OUTPUTS))
    parameters: dict[str, Any] | None = None

    @field_validator("outputs")
    @classmethod
    def _distinct(cls, outputs: list[RequestedOutput] | None) -> list[RequestedOutput] | None:
        if outputs is not None and len({o.name for o in outputs}) != len(outputs):
            raise ValueError("each output may be named once")
        return outputs


def parse_json(raw: bytes) -> InferRequest:
    """The request in ``raw`` (run it in a worker thread: parsing a large body takes time)."""
    if not raw:
        raise BadInputError("empty request body; send a KServe v2 inference request (JSON)")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"the body is not valid JSON: {e}") from e
    except RecursionError:
        raise BadInputError("the body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # an integer literal of more digits than Python converts
        raise BadInputError(f"the body holds a number that cannot be read: {e}") from e
    if not isinstance(body, dict):
        raise BadInputError("the inference request must be a JSON object")
    try:
        return InferRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise BadInputError(f"invalid inference request: {where}: {first['msg']}") from None


def request_batch(runtime: Runtime, task: str, request: InferRequest) -> np.ndarray:
    """The task's preprocessed ``[N,3,S,S]`` batch from the request's one input."""
    inp = request.inputs[0]
    want = math.prod(inp.shape)  # exact: no wrap-around however large the dimensions
    limits = runtime.limits
    if inp.datatype == "BYTES":
        if want > limits.max_images:
            raise InputTooLargeError(f"{want:,} images in one request; the limit is {limits.max_images}")
        values = _flatten(inp.data, len(inp.shape), want)
        return runtime.preprocess(task, [_b64(v) for v in values])
    if want > limits.max_images * limits.max_pixels * 4:
        raise InputTooLargeError(f"shape {inp.shape} holds {want:,} values, over the request limit")
    values = _flatten(inp.data, len(inp.shape), want)
    if want == 0:
        raise BadInputError(f"shape {inp.shape} holds no values: send at least one image")
    arr = _numbers(values, inp.datatype)
    return runtime.preprocess(task, arr.reshape(inp.shape))


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


def _b64(item: Any) -> bytes:
    if not isinstance(item, str):
        raise BadInputError("BYTES data must be base64-encoded strings of encoded images")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadInputError(f"BYTES data is not valid base64: {e}") from e


def response_body(runtime: Runtime, task: str, request: InferRequest, logits: np.ndarray) -> bytes:
    """The JSON response (built off the event loop: a batch of many classes is many numbers)."""
    n, k = logits.shape
    outputs = request.outputs or [RequestedOutput(name=name) for name in OUTPUTS]
    result = []
    for out in outputs:
        top = out.parameters.classification if out.parameters else None
        if top is not None:
            rows = runtime.decode(task, logits, top)
            data = [f"{s:.6f}:{i}:{l}" for p in rows for l, i, s in zip(p.labels, p.indices, p.scores)]
            result.append({"name": out.name, "datatype": "BYTES", "shape": [n, min(top, k)], "data": data})
            continue
        values = softmax(logits.astype(np.float64)) if out.name == "probabilities" else logits
        result.append({"name": out.name, "datatype": "FP32", "shape": [n, k],
                       "data": [round(float(v), 7) for v in values.reshape(-1)]})
    return json.dumps({"model_name": task, "model_version": "1", "id": request.id or "",
                       "outputs": result}).encode()
