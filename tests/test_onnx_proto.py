"""tailorrt's reader of ONNX initializers (serving has no ``onnx`` package) against ``onnx.load``, on the graphs
that export writes and on ONNX Runtime's optimised graphs, which are what the weight store reads."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tailorrt.errors import PackError
from tailorrt.onnx_proto import initializers
from tailorrt.onnx_weight_store import optimize_graph


def _reference(path) -> list[tuple]:
    model = onnx.load(str(path), load_external_data=False)
    out = []
    for t in model.graph.initializer:
        external = {e.key: e.value for e in t.external_data} if t.data_location == onnx.TensorProto.EXTERNAL else {}
        out.append((t.name, helper.tensor_dtype_to_np_dtype(t.data_type), tuple(t.dims), external))
    return out


def _ours(path) -> list[tuple]:
    return [(t.name, t.dtype, t.dims, t.external) for t in initializers(path)]


def test_the_reader_agrees_with_onnx_on_exported_and_optimised_graphs(exported_dir, tmp_path):
    graph = exported_dir / "onnx" / "colors.onnx"
    optimized = tmp_path / "optimized.onnx"
    optimize_graph(graph, optimized)
    for path in (graph, optimized, exported_dir / "onnx-int8" / "colors.onnx"):
        want = _reference(path)
        assert want and _ours(path) == want, path
    assert any(t.location is not None for t in initializers(optimized))


def test_inline_tensors_negative_dims_and_every_dtype(tmp_path):
    tensors = [numpy_helper.from_array(np.arange(6, dtype=d).reshape(2, 3), f"t{i}")
               for i, d in enumerate((np.float32, np.int8, np.uint8, np.int64, np.float16))]
    node = helper.make_node("Identity", ["t0"], ["y"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
                              initializer=tensors)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert _ours(path) == _reference(path)
    assert all(t.location is None for t in initializers(path))


def test_a_file_that_is_not_onnx_is_one_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x3a\xff\xff\xff\xff\x0f")  # a graph field longer than the file
    with pytest.raises(PackError, match="not a readable ONNX model"):
        initializers(path)
