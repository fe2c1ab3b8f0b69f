"""A task graph rewritten for ONNX Runtime's NCHWc layout before a shared-weights session optimises it.

A task whose batch norms are its own runs each of them after a shared convolution as a pass of its own (folding it
would change the shared weight). ONNX Runtime's NCHWc transformer (x86 with AVX2 or AVX-512) turns such a
``BatchNormalization`` into a 1x1 depthwise convolution only after its activation fusions have run, so a ReLU6
(``Clip``) after it stays a node of its own that the NCHWc layout cannot run: each one costs a reorder out of the
layout, the Clip and a reorder back. Written as that 1x1 depthwise ``Conv`` (weight ``gamma / sqrt(var + eps)``,
bias ``beta - mean * weight``) before optimisation, the Clip fuses into it and the residual add too, as into any
convolution. On EfficientNet-Lite0 at 224 px a NetTailor task's optimised graph went from 126 nodes (27 reorders,
14 Clips) to 86 (README, Runtime and server). The exported graphs keep their ``BatchNormalization``: a plain session
folds it into the convolution, which a shared weight cannot take.

The graph is read and written with ``onnx-ml.proto``'s messages built from its descriptor (``assets/onnx.desc``,
the ``onnx`` package's own, Apache-2.0), so a serving install needs no ``onnx`` package; ``tests/test_onnx_rewrite.py``
holds it equal to the installed package's and rewrites it with ``python -m tailorrt.training.onnx_descriptor``.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
from google.protobuf import descriptor_pool, message_factory

from tailorrt.cpu import cpu_flags

DESCRIPTOR = "onnx.desc"
FLOAT = 1  # TensorProto.FLOAT
NCHWC_FLAGS = ("avx2", "avx512f")  # where ONNX Runtime's MLAS has NCHWc kernels (block size 8 or 16)


@functools.cache
def _classes() -> tuple[type, type, type]:
    """ModelProto, NodeProto and TensorProto, from a descriptor pool of their own (no clash with ``onnx``'s)."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile((resources.files("tailorrt") / "assets" / DESCRIPTOR).read_bytes())
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"onnx.{n}"))
                 for n in ("ModelProto", "NodeProto", "TensorProto"))


def nchwc_cpu(flags: set[str] | None = None) -> bool:
    """Whether ONNX Runtime runs convolutions in its NCHWc layout on this CPU (else the rewrite would not pay)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NCHWC_FLAGS)


def _array(tensor) -> np.ndarray | None:
    """An inline float initializer as float64 (None for any other kind)."""
    if tensor.data_type != FLOAT or tensor.external_data:
        return None
    data = np.frombuffer(tensor.raw_data, "<f4") if tensor.raw_data else np.asarray(tensor.float_data, np.float32)
    return data.astype(np.float64).reshape(tuple(tensor.dims))


def affines_as_convs(graph: bytes) -> tuple[bytes, int]:
    """``graph`` with every ``BatchNormalization`` that reads a ``Conv``'s output (and whose parameters are inline
    floats) written as a 1x1 depthwise ``Conv``, and how many were."""
    model_cls, node_cls, tensor_cls = _classes()
    model = model_cls.FromString(graph)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    conv_outputs = {n.output[0] for n in g.node if n.op_type == "Conv" and not n.domain}
    nodes, count, dropped = [], 0, set()
    for node in g.node:
        params = [_array(inits[i]) if i in inits else None for i in node.input[1:5]]
        if (node.op_type != "BatchNormalization" or node.domain or node.input[0] not in conv_outputs
                or len(params) != 4 or any(p is None or p.ndim != 1 for p in params)):
            nodes.append(node)
            continue
        gamma, beta, mean, var = params
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        names = (f"{node.name or node.output[0]}.affine_weight", f"{node.name or node.output[0]}.affine_bias")
        for name, value in zip(names, (scale.reshape(-1, 1, 1, 1), beta - mean * scale), strict=True):
            g.initializer.append(tensor_cls(name=name, data_type=FLOAT, dims=value.shape,
                                            raw_data=value.astype("<f4").tobytes()))
        conv = node_cls(op_type="Conv", name=node.name, input=[node.input[0], *names], output=node.output[:1])
        for name, ints in (("kernel_shape", [1, 1]), ("pads", [0, 0, 0, 0]), ("strides", [1, 1])):
            conv.attribute.add(name=name, ints=ints, type=7)  # AttributeProto.INTS
        conv.attribute.add(name="group", i=len(scale), type=2)  # AttributeProto.INT
        nodes.append(conv)
        dropped.update(node.input[1:5])
        count += 1
    if not count:
        return graph, 0
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used or t.name not in dropped]  # the norms' own parameters go
    del g.initializer[:]
    g.initializer.extend(kept)
    return model.SerializeToString(), count
