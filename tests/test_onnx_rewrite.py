"""The rewrite that keeps a shared-weights session in ONNX Runtime's NCHWc layout: batch norms after convolutions
written as 1x1 depthwise convolutions, read and written without the ``onnx`` package."""

from __future__ import annotations

from importlib import resources

import numpy as np
import onnx
import onnx.onnx_ml_pb2
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tailorrt import onnx_rewrite
from tailorrt.onnx_weight_store import optimize_graph


def test_the_descriptor_is_the_installed_onnx_packages():
    shipped = (resources.files("tailorrt") / "assets" / onnx_rewrite.DESCRIPTOR).read_bytes()
    assert shipped == onnx.onnx_ml_pb2.DESCRIPTOR.serialized_pb, "run python -m tailorrt.training.onnx_descriptor"


def _graph(rng: np.random.Generator) -> onnx.ModelProto:
    """conv -> norm -> relu6, conv -> norm (+ the first's output), and a norm after an input (left as it is)."""
    c = 8

    def init(name, *shape, positive=False):
        v = rng.random(shape) + 0.5 if positive else rng.standard_normal(shape)
        return numpy_helper.from_array(v.astype(np.float32), name)

    inits = [init("w1", c, 3, 3, 3), init("w2", c, c, 1, 1), helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])]
    for i in range(3):
        inits += [init(f"g{i}", c if i < 2 else 3), init(f"b{i}", c if i < 2 else 3),
                  init(f"m{i}", c if i < 2 else 3), init(f"v{i}", c if i < 2 else 3, positive=True)]
    nodes = [helper.make_node("BatchNormalization", ["input", "g2", "b2", "m2", "v2"], ["x0"], epsilon=1e-3),
             helper.make_node("Conv", ["x0", "w1"], ["y1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["y1", "g0", "b0", "m0", "v0"], ["n1"], name="bn1", epsilon=1e-3),
             helper.make_node("Clip", ["n1", "lo", "hi"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2"], ["y2"]),
             helper.make_node("BatchNormalization", ["y2", "g1", "b1", "m1", "v1"], ["n2"]),
             helper.make_node("Add", ["n2", "a1"], ["logits"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", c, 6, 6])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_norms_after_convs_become_depthwise_convs_with_the_same_output():
    model = _graph(np.random.default_rng(0))
    before = model.SerializeToString()
    after, count = onnx_rewrite.affines_as_convs(before)
    assert count == 2
    rewritten = onnx.load_from_string(after)
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["BatchNormalization", "Conv", "Conv", "Clip", "Conv", "Conv", "Add"]
    depthwise = rewritten.graph.node[2]
    assert depthwise.name == "bn1" and helper.get_attribute_value(depthwise.attribute[-1]) == 8
    names = {t.name for t in rewritten.graph.initializer}
    assert {"g2", "v2"} <= names and not {"g0", "b0", "m0", "v0", "g1"} & names  # the replaced norms' go
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), _run(before, x), rtol=1e-5, atol=1e-5)
    assert onnx_rewrite.affines_as_convs(after) == (after, 0)  # nothing left to rewrite: the same bytes


@pytest.mark.skipif(not onnx_rewrite.nchwc_cpu(), reason="ONNX Runtime has no NCHWc layout on this CPU")
def test_a_shared_session_of_an_mbconv_task_with_its_own_norms_stays_in_the_nchwc_layout(tmp_path):
    from tailorrt.export.exporter import ExportRequest, export_model
    from tailorrt.training.synthetic import make_model_dir

    make_model_dir(tmp_path / "m", backbone="tiny-mbconv", tasks=1, classes=3)
    export_model(ExportRequest(model_dir=str(tmp_path / "m"), parity_images=2, fuse_budget=0.0),
                 report=lambda _: None)
    ops = {}
    for fuse in (False, True):
        optimize_graph(tmp_path / "m" / "onnx" / "synthetic-0.onnx", tmp_path / f"o{fuse}.onnx", fuse=fuse)
        ops[fuse] = [n.op_type for n in onnx.load(str(tmp_path / f"o{fuse}.onnx"), load_external_data=False).graph.node]
    # the shared session runs one more node per owned norm than the folded one, and no reorder or Clip between
    assert "Clip" not in ops[False] and ops[False].count("ReorderOutput") == ops[True].count("ReorderOutput")
    assert "BatchNormalization" not in ops[False]
