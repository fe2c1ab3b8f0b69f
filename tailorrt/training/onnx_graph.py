"""Building ONNX task graphs by hand, so that shared weights keep one name and one file.

A :class:`GraphBuilder` collects nodes and initializers for one task. Initializers come in two
kinds: *shared* ones (universal convolution weights, named like the backbone's state-dict keys and
stored once in an external data file, see :class:`SharedWeights`) and *private* ones (everything the
task owns), prefixed with the task name so that several task graphs can later be merged into one
session without clashes.

Scaling is tracked explicitly: a value ``v`` emitted for a true activation ``u`` satisfies
``u = c * v`` for a positive scalar ``c``. Convolutions, ReLU and pooling commute with ``c``, and a
batch norm absorbs it into its per-task affine, so block-attention weights never need a multiply.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tailorrt.errors import ExportError
from tailorrt.files import atomic_path

OPSET = 17
IR_VERSION = 10  # ONNX 1.16; read by onnxruntime >= 1.18 (pyproject pins >= 1.20)
INPUT = "input"
LOGITS = "logits"
PROBS = "probabilities"
SHARED_FILE = "universal.data"
PAGE = 4096  # large tensors start on a page, so onnxruntime can memory-map them
PAGE_ALIGN_FROM = 64 * 1024  # smaller ones are packed at 64-byte alignment (padding a page each would cost more)


class SharedWeights:
    """The universal convolution weights of a backbone, laid out in one external data file.

    Shared tensors are recognised by *identity*: a task network's frozen universal modules hold the
    very ``Parameter`` objects of the backbone (see ``student.share_frozen``).

    A convolution that the backbone follows by a batch norm is stored with that norm's scale folded in
    (``W' = a * W``, ``a = gamma / sqrt(var + eps)`` per output channel; :attr:`norm_scale` keeps ``a``), so a task
    that runs the backbone's own norm needs no pass of its own after the shared convolution: the graph's ``Conv``
    takes ``W'`` and the norm's shift as its bias, as a network with its norms folded does, and ONNX Runtime fuses
    the activation or the residual add into it. A task with norms of its own divides its affine by ``a``.
    """

    def __init__(self, backbone: nn.Module, location: str = SHARED_FILE) -> None:
        self.location = location
        self.tensors: dict[str, np.ndarray] = {}
        self.norm_scale: dict[str, np.ndarray] = {}  # name -> the backbone norm's scale folded into the tensor
        self._by_id: dict[int, str] = {}
        norms = _norm_after(backbone)
        for mod_name, mod in backbone.named_modules():
            if isinstance(mod, nn.Conv2d):
                for p_name, p in mod.named_parameters(recurse=False):
                    name = f"{mod_name}.{p_name}"
                    w = p.detach().cpu().double().numpy()
                    a = _foldable_scale(norms.get(mod_name)) if p_name == "weight" and mod.bias is None else None
                    if a is not None:
                        w = w * a[:, None, None, None]
                        self.norm_scale[name] = a
                    self.tensors[name] = w.astype(np.float32)
                    self._by_id[id(p)] = name
        self.offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, arr in self.tensors.items():
            offset = _align(offset, PAGE if arr.nbytes >= PAGE_ALIGN_FROM else 64)
            self.offsets[name] = (offset, arr.nbytes)
            offset += arr.nbytes

    def name_of(self, param: torch.Tensor) -> str | None:
        """The shared name of a backbone parameter, or None if the tensor is not shared."""
        return self._by_id.get(id(param))

    def folded_scale(self, param: torch.Tensor) -> np.ndarray | None:
        """The backbone norm's scale that the stored form of ``param`` holds folded in, or None."""
        return self.norm_scale.get(self.name_of(param))

    def proto(self, name: str) -> TensorProto:
        """An initializer that points into the shared file instead of holding the data."""
        arr = self.tensors[name]
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(arr.shape))
        offset, length = self.offsets[name]
        for key, value in (("location", self.location), ("offset", offset), ("length", length)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        t.data_location = TensorProto.EXTERNAL
        return t

    def write(self, path: Path) -> None:
        """Write the data file (atomically): every tensor at its page-aligned offset, little-endian fp32."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            for name, arr in self.tensors.items():
                offset, _ = self.offsets[name]
                f.write(b"\0" * (offset - f.tell()))
                f.write(arr.astype("<f4").tobytes())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())


def _norm_after(backbone: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Each convolution's batch norm, by the convolution's name: the leaf module right after it, where that is a
    norm of its output channels (a block's modules are declared in the order they run)."""
    leaves = [(n, m) for n, m in backbone.named_modules() if not any(True for _ in m.children())]
    return {name: nxt for (name, m), (_, nxt) in itertools.pairwise(leaves)
            if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels}


def _foldable_scale(bn: nn.BatchNorm2d | None) -> np.ndarray | None:
    """The norm's per-channel scale ``gamma / sqrt(var + eps)``, or None where there is no norm or a scale too
    near 0 to divide by (a task with its own norm divides its affine by it)."""
    if bn is None:
        return None
    a, _ = bn_fold(bn)
    size = np.abs(a)
    return a if size.min() >= 1e-6 * size.max() > 0 else None


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class GraphBuilder:
    """Nodes and initializers of one task graph; private names are prefixed with ``prefix/``.

    ``fused`` names shared convolution weights that this graph copies, with the task's batch norm folded in,
    instead of referencing them (see :func:`~tailorrt.training.onnx_layers.choose_fused`)."""

    def __init__(self, prefix: str, shared: SharedWeights, fused: frozenset[str] = frozenset()) -> None:
        self.prefix = prefix
        self.shared = shared
        self.fused = fused
        self.nodes: list[onnx.NodeProto] = []
        self.private: dict[str, np.ndarray] = {}
        self.shared_used: list[str] = []
        self.fused_used: list[str] = []  # the names of ``fused`` this graph copied (what it runs)
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def const(self, hint: str, arr: np.ndarray) -> str:
        """A private initializer."""
        name = self._name(hint)
        self.private[name] = np.ascontiguousarray(arr)
        return name

    def cached_const(self, key: tuple, hint: str, arr: np.ndarray) -> str:
        """A private initializer reused for equal keys (e.g. the zero means of every width)."""
        if key not in self._consts:
            self._consts[key] = self.const(hint, arr)
        return self._consts[key]

    def keeps_shared(self, param: torch.Tensor) -> bool:
        """Whether ``param`` is a shared weight that this graph references (not one it copies fused)."""
        name = self.shared.name_of(param)
        return name is not None and name not in self.fused

    def copied(self, param: torch.Tensor) -> None:
        """Note that the graph holds ``param``, if it is a shared weight, as a fused private copy."""
        name = self.shared.name_of(param)
        if name is not None and name not in self.fused_used:
            self.fused_used.append(name)

    def weight(self, param: torch.Tensor, hint: str) -> str:
        """The shared name of a universal parameter, else a private copy of it."""
        name = self.shared.name_of(param)
        if name is None:
            return self.const(hint, param.detach().cpu().numpy().astype(np.float32))
        if name not in self.shared_used:
            self.shared_used.append(name)
        return name

    def node(self, op: str, inputs: Iterable[str], hint: str | None = None, *, output: str | None = None,
             **attrs) -> str:
        out = output or self._name(hint or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{self.prefix}/{op}_{len(self.nodes)}",
                                           **attrs))
        return out

    def model(self, input_shape: tuple[int, int, int], num_classes: int, metadata: dict[str, str]
              ) -> onnx.ModelProto:
        """Finish (after :meth:`classifier`): softmax probabilities, dynamic batch axis, shared initializers
        as external data, ``metadata`` as model properties."""
        self.node("Softmax", [LOGITS], output=PROBS, axis=1)
        inits = [self.shared.proto(n) for n in self.shared_used]
        inits += [numpy_helper.from_array(a.astype(np.float32) if a.dtype == np.float64 else a, n)
                  for n, a in self.private.items()]
        graph = helper.make_graph(
            self.nodes, f"tailorrt-{self.prefix}",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *input_shape])],
            [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", num_classes]),
             helper.make_tensor_value_info(PROBS, TensorProto.FLOAT, ["batch", num_classes])],
            inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                                  producer_name="tailorrt")
        helper.set_model_props(model, metadata)
        return model

    # ------------------------------------------------------------------ layers

    def conv(self, x: str, conv: nn.Conv2d, *, weight: np.ndarray | None = None, bias: np.ndarray | None = None
             ) -> str:
        """A convolution; ``weight``/``bias`` override the module's (folded, private) tensors."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ExportError(f"cannot export a convolution with padding {conv.padding!r}/{conv.padding_mode!r}")
        w = self.const("w", weight) if weight is not None else self.weight(conv.weight, "w")
        inputs = [x, w]
        if bias is not None:
            inputs.append(self.const("b", bias))
        elif conv.bias is not None:
            inputs.append(self.weight(conv.bias, "b"))
        same = getattr(conv, "same_pads", None)  # TensorFlow's SAME padding at the backbone's input size
        top, left, bottom, right = same if same is not None else (*conv.padding, *conv.padding)
        return self.node("Conv", inputs, "conv", kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
                         pads=[top, left, bottom, right], dilations=list(conv.dilation), group=conv.groups)

    def affine(self, x: str, scale: np.ndarray, shift: np.ndarray) -> str:
        """Per-channel ``scale * x + shift`` as an inference BatchNormalization (mean 0, var 1, eps 0)."""
        c = scale.shape[0]
        zeros = self.cached_const(("zeros", c), "zeros", np.zeros(c, np.float32))
        ones = self.cached_const(("ones", c), "ones", np.ones(c, np.float32))
        return self.node("BatchNormalization", [x, self.const("scale", scale.astype(np.float32)),
                                                self.const("shift", shift.astype(np.float32)), zeros, ones],
                         "bn", epsilon=0.0)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], "relu")

    def clip(self, x: str, high: float) -> str:
        """``min(max(x, 0), high)`` (ReLU6 of a value at scale ``6 / high``)."""
        low_c = self.cached_const(("clip", 0.0), "zero", np.array(0.0, np.float32))
        high_c = self.cached_const(("clip", float(high)), "high", np.array(high, np.float32))
        return self.node("Clip", [x, low_c, high_c], "clip")

    def add(self, terms: list[str]) -> str:
        out = terms[0]
        for t in terms[1:]:
            out = self.node("Add", [out, t], "add")
        return out

    def pool(self, x: str, pool: nn.Module) -> str:
        """MaxPool2d/AvgPool2d (or Identity) as in PyTorch."""
        if isinstance(pool, nn.Identity):
            return x
        if not isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
            raise ExportError(f"cannot export pooling module {type(pool).__name__}")
        k, s, p = (_pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding))
        if pool.ceil_mode or (isinstance(pool, nn.MaxPool2d) and _pair(pool.dilation) != (1, 1)):
            raise ExportError("cannot export pooling with ceil_mode or dilation")
        attrs = {"kernel_shape": list(k), "strides": list(s), "pads": [p[0], p[1], p[0], p[1]]}
        if isinstance(pool, nn.AvgPool2d):
            attrs["count_include_pad"] = int(pool.count_include_pad)
            return self.node("AveragePool", [x], "avgpool", **attrs)
        return self.node("MaxPool", [x], "maxpool", **attrs)

    def pad_channels(self, x: str, extra: int) -> str:
        """Zero channels appended at the end (the Decathlon shortcut)."""
        pads = self.cached_const(("pad", extra), "pads", np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64))
        return self.node("Pad", [x, pads], "pad")

    def classifier(self, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
        """Global average pooling and the linear head, writing the graph's ``logits``."""
        pooled = self.node("Flatten", [self.node("GlobalAveragePool", [x], "gap")], "flat")
        return self.node("Gemm", [pooled, self.const("fc_w", weight.astype(np.float32)),
                                  self.const("fc_b", bias.astype(np.float32))], output=LOGITS, transB=1)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def bn_fold(bn: nn.Module, in_scale: float = 1.0, mult: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``mult * BN(in_scale * v)`` as ``scale * v + shift`` (float64), for a BN in eval mode; a BN that carries a
    per-channel ``attention`` multiplier (applied after it) has it multiply both."""
    if not isinstance(bn, nn.BatchNorm2d):
        raise ExportError(f"expected a BatchNorm2d, found {type(bn).__name__}")
    attention = getattr(bn, "attention", None)
    if attention is not None:
        mult = mult * attention.detach().double().cpu().numpy()
    mean = bn.running_mean.detach().double().cpu().numpy()
    inv = 1.0 / np.sqrt(bn.running_var.detach().double().cpu().numpy() + bn.eps)
    gamma = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(mean)
    beta = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(mean)
    return mult * gamma * inv * in_scale, mult * (beta - gamma * mean * inv)


def check_positive(value: float, what: str) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ExportError(f"{what} is {value}; only positive finite scales can be folded")
    return value


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Write a task graph atomically and check it (with its external data) against the ONNX spec."""
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported graph {path.name} is not valid ONNX: {e}") from e
