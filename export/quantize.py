"""INT8 task graphs whose universal weights stay byte-identical across tasks (``tailor export --precision int8``).

A task graph runs every universal conv with the task's own batch norm after it. Quantising the graph
as ONNX Runtime's tools do (fold the batch norm, then quantise each folded weight per output channel)
would give every task its own int8 copy of the backbone. Instead:

1. Each universal conv weight ``W`` is quantised once, from the backbone alone: per output channel,
   symmetric and 7-bit, ``s = max|W_c| / 64`` and ``q = round(W / s)`` (the *canonical* int8 weights,
   written once to ``onnx-int8/universal-int8.data``). 7 bits as ONNX Runtime's ``reduce_range``: CPUs
   without VNNI multiply u8 activations by s8 weights in pairs summed into int16, which saturates with
   8-bit weights (synth-signs lost 2.1 points that way on an AVX2 CPU, and none with 7-bit weights).
2. In each task graph the batch norm after a universal conv (``a * conv(x) + b``) is folded into a conv
   whose weight is ``a * s * q``. ONNX Runtime's quantiser, per channel and symmetric, then finds the
   scale ``a * s`` and the int8 weight ``q`` again, exactly: the task owns the per-channel scales and
   the bias, and the int8 tensor is the shared one. A channel with ``a < 0`` would come out as ``-q``;
   such a conv keeps a private int8 copy (counted in the manifest).
3. Activations are quantised per tensor (uint8) from ranges calibrated on the task's own training images.

The runtime then hands the one stored int8 tensor to every task's session, like the fp32 weights
(:mod:`tailorrt.onnx_weight_store`). ONNX Runtime's int8 convs still re-lay ("pre-pack") it inside each session
unless pre-packing is off: see ``Runtime(share_weights=...)`` and the README's "Low precision on CPU".
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from tailorrt.files import atomic_path
from tailorrt.training.onnx_graph import save_graph

SHARED_INT8_FILE = "universal-int8.data"
QMAX = 64  # 7-bit weights (ONNX Runtime's reduce_range): no int16 saturation in AVX2's u8 x s8 products
# Clip: MBConv's ReLU6; the head (Gemm) and softmax stay fp32
QUANTIZED_OPS = ["Conv", "Add", "Relu", "Clip", "MaxPool"]
PAGE = 4096


@dataclass
class CanonicalWeights:
    """The universal conv weights quantised once: int8 values, per-channel scales, and their offsets in
    :data:`SHARED_INT8_FILE`."""

    q: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]
    offsets: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, shared: dict[str, np.ndarray]) -> CanonicalWeights:
        """Quantise the 4-d (conv weight) tensors of ``shared``."""
        q, scale, offsets, offset = {}, {}, {}, 0
        for name, w in shared.items():
            if w.ndim != 4:
                continue
            q[name], scale[name] = quantize_per_channel(w)
            offset = -(-offset // PAGE) * PAGE
            offsets[name] = (offset, q[name].nbytes)
            offset += q[name].nbytes
        return cls(q, scale, offsets)

    def write(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            for name, arr in self.q.items():
                f.write(b"\0" * (self.offsets[name][0] - f.tell()))
                f.write(arr.tobytes())

    def by_digest(self) -> dict[str, str]:
        return {hashlib.sha256(a.tobytes()).hexdigest(): n for n, a in self.q.items()}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.q.values())


def quantize_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 quantisation: ``(q, s)`` with ``w ~= s[:, None, None, None] * q``."""
    w64 = w.astype(np.float64)
    peak = np.abs(w64.reshape(len(w64), -1)).max(axis=1)
    s = np.where(peak > 0, peak / QMAX, 1.0)
    q = np.clip(np.rint(w64 / s[:, None, None, None]), -QMAX, QMAX).astype(np.int8)
    return q, s


def fold_batchnorms(model: onnx.ModelProto, canonical: CanonicalWeights) -> int:
    """Fold every BatchNormalization that is a conv's only consumer into that conv, in place; a universal
    weight is folded as ``a * s * q`` (see the module docstring), and one with no norm after it (a task that runs
    the backbone's own norms, folded into the shared weight) is written as ``s * q``, so that the quantiser finds
    the canonical ``q`` in it too. Returns how many norms were folded."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    outputs = {o.name for o in graph.output}
    dropped, folded = [], 0
    for conv in [n for n in graph.node if n.op_type == "Conv"]:
        out, wname = conv.output[0], conv.input[1]
        bn = users[out][0] if out not in outputs and len(users[out]) == 1 else None
        bn = bn if bn is not None and bn.op_type == "BatchNormalization" else None
        if bn is None and wname not in canonical.q:
            continue
        if bn is not None:
            gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            a = gamma / np.sqrt(var + eps)
        else:
            a, beta, mean = np.ones(1), 0.0, 0.0
        if wname in canonical.q:
            w = canonical.scale[wname][:, None, None, None] * canonical.q[wname].astype(np.float64)
        else:
            w = numpy_helper.to_array(inits[wname]).astype(np.float64)
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 else 0.0
        prefix = f"{conv.name}/folded"
        graph.initializer.extend([
            numpy_helper.from_array((w * a.reshape(-1, 1, 1, 1)).astype(np.float32), f"{prefix}_w"),
            numpy_helper.from_array(np.broadcast_to(bias * a + beta - a * mean, (len(w),)).astype(np.float32),
                                    f"{prefix}_b")])
        del conv.input[1:]
        conv.input.extend([f"{prefix}_w", f"{prefix}_b"])
        if bn is not None:
            conv.output[0] = bn.output[0]
            dropped.append(bn)
            folded += 1
    for bn in dropped:
        graph.node.remove(bn)
    used = {n for node in graph.node for n in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return folded


class _Batches:
    """ONNX Runtime's CalibrationDataReader over an iterator of image batches."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self.batches = batches

    def get_next(self) -> dict | None:
        x = next(self.batches, None)
        return None if x is None else {"input": np.ascontiguousarray(x, dtype=np.float32)}


def quantize_task(fp32_graph: Path, out: Path, canonical: CanonicalWeights,
                  calibration: Callable[[], Iterator[np.ndarray]]) -> dict:
    """Write the int8 (QDQ) graph of an exported fp32 task graph to ``out``, its canonical weights pointing into
    :data:`SHARED_INT8_FILE` beside it. Returns counts of shared and private int8 bytes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_graph))  # with the universal weights read in
    fold_batchnorms(model, canonical)
    with tempfile.TemporaryDirectory(prefix="tailorrt-int8-") as tmp:
        folded, quantized = Path(tmp) / "folded.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(folded))
        quantize_static(str(folded), str(quantized), _Batches(calibration()), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=QUANTIZED_OPS,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        int8 = onnx.load(str(quantized))
    counts = share_canonical(int8, canonical)
    save_graph(int8, out)
    return counts


def share_canonical(model: onnx.ModelProto, canonical: CanonicalWeights) -> dict:
    """Point every int8 initializer equal to a canonical weight into :data:`SHARED_INT8_FILE`, in place."""
    digests = canonical.by_digest()
    shared = private = 0
    for t in model.graph.initializer:
        if t.data_type != TensorProto.INT8 or len(t.dims) != 4:
            continue
        data = numpy_helper.to_array(t).tobytes()
        name = digests.get(hashlib.sha256(data).hexdigest())
        if name is None:
            private += len(data)
            continue
        offset, length = canonical.offsets[name]
        t.ClearField("raw_data")
        t.ClearField("int32_data")
        del t.external_data[:]
        for key, value in (("location", SHARED_INT8_FILE), ("offset", offset), ("length", length)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        t.data_location = TensorProto.EXTERNAL
        shared += length
    return {"shared_int8_bytes": shared, "private_int8_bytes": private}
