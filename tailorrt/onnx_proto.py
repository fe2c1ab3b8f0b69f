"""The initializers of an ONNX graph file as (name, dtype, shape, external location), read from the protobuf wire
format directly, so that serving needs no ``onnx`` package (it and the ``ml_dtypes`` it pulls are about 55 MB of
a serving install). Only the fields the weight store needs are read (``onnx.proto3``: ModelProto.graph = 7,
GraphProto.initializer = 5; TensorProto dims = 1, data_type = 2, name = 8, external_data = 13,
data_location = 14); every other field is skipped. ``tests/test_onnx_proto.py`` holds it equal to ``onnx.load``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailorrt.errors import PackError

# TensorProto.DataType -> numpy (the types a CPU graph of ours holds; bfloat16 and the float8s have no numpy dtype)
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
          10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
EXTERNAL = 1  # TensorProto.DataLocation
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass(frozen=True)
class Initializer:
    """An initializer of a graph: where its data lies when it is stored outside the graph file."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    external: dict[str, str]  # external_data key -> value ("location", "offset", "length"); empty when inline

    @property
    def dtype(self) -> np.dtype:
        if self.data_type not in DTYPES:
            raise PackError(f"initializer {self.name!r} has ONNX data type {self.data_type}, which has no numpy type")
        return np.dtype(DTYPES[self.data_type])

    @property
    def location(self) -> tuple[int, int] | None:
        """(offset, length) in the external data file, or None for a tensor stored in the graph."""
        if not self.external:
            return None
        return int(self.external.get("offset", 0)), int(self.external["length"])


def initializers(path: Path) -> list[Initializer]:
    """The initializers of the ONNX model file at ``path``, in graph order."""
    data = memoryview(Path(path).read_bytes())
    try:
        graphs = [value for number, value in _fields(data) if number == 7]
        return [_initializer(value) for graph in graphs for number, value in _fields(graph) if number == 5]
    except (IndexError, ValueError, UnicodeDecodeError) as e:
        raise PackError(f"{path} is not a readable ONNX model ({e})") from e


def _initializer(data: memoryview) -> Initializer:
    name, data_type, dims, external, location = "", 0, [], {}, 0
    for number, value in _fields(data):
        if number == 1:
            dims.extend(_packed(value) if isinstance(value, memoryview) else [value])
        elif number == 2:
            data_type = value
        elif number == 8:
            name = bytes(value).decode()
        elif number == 13:
            entry = {n: bytes(v).decode() for n, v in _fields(value)}
            external[entry.get(1, "")] = entry.get(2, "")
        elif number == 14:
            location = value
    return Initializer(name, data_type, tuple(dims), external if location == EXTERNAL else {})


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of a message: an int for varints, a memoryview for length-delimited fields."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("a field runs past the end of its message")
            yield number, data[pos:pos + length]
            pos += length
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
        else:
            raise ValueError(f"wire type {wire} of field {number} is not one ONNX files use")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _packed(data: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        values.append(value - (1 << 64) if value >= 1 << 63 else value)  # int64 dims
    return values
