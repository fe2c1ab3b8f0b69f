"""Rewrite ``tailorrt/assets/onnx.desc`` (the descriptor :mod:`tailorrt.onnx_rewrite` reads ONNX graphs with) from
the installed ``onnx`` package, after upgrading it::

    python -m tailorrt.training.onnx_descriptor
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import onnx.onnx_ml_pb2

from tailorrt.onnx_rewrite import DESCRIPTOR


def write_descriptor() -> None:
    """Write the installed ``onnx`` package's ``onnx-ml.proto`` descriptor over the shipped one."""
    with resources.as_file(resources.files("tailorrt") / "assets" / DESCRIPTOR) as path:
        Path(path).write_bytes(onnx.onnx_ml_pb2.DESCRIPTOR.serialized_pb)


if __name__ == "__main__":
    write_descriptor()
