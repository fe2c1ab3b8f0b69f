"""The layers every task graph is made of, written as ONNX: conv/batch-norm/ReLU/pool sequences, residual blocks
and the classifier head, over shared weights where a module holds the backbone's own (see
:class:`~tailorrt.training.onnx_graph.GraphBuilder`). Each method's network is emitted from these by its own
``emit`` (see :mod:`tailorrt.training.methods`).

Scales are tracked as in :mod:`tailorrt.training.onnx_graph`: a value ``v`` emitted for a true activation ``u``
satisfies ``u = c * v``, and a multiplier ``mult`` asked of a sequence is folded into its last batch
norm (private to the task), so block-attention weights never need a ``Mul``. Blocks whose shortcut
carries the input unchanged cannot absorb a scale (see :func:`passes_input`).

Modules may carry what a method adds, read by duck typing so that nothing here knows the methods:
a convolution's ``effective_weight()`` (the weight it applies, when not its ``weight``), a
convolution's ``parallel`` convolution (read from the same input, added to its output: residual
adapters), and a batch norm's per-channel ``attention`` multiplier (applied after it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from tailorrt.errors import ExportError
from tailorrt.training.backbones import DecathlonBlock
from tailorrt.training.mbconv import MBConvBlock
from tailorrt.training.onnx_graph import GraphBuilder, SharedWeights, bn_fold, check_positive


def emit_sequence(g: GraphBuilder, modules: list[nn.Module], x: str, in_scale: float, mult: float = 1.0
                  ) -> tuple[str, float]:
    """Emit conv/BN/ReLU/pool modules applied to a value whose true activation is ``in_scale * x``.

    ``mult`` multiplies the output (it is folded into the last batch norm). Returns the output value
    and its scale ``c`` (true output = ``c * value``). A universal conv keeps its shared weight and is
    followed by a private per-channel affine; a task-owned conv has its batch norm folded into it.
    """
    last_bn = max((i for i, m in enumerate(modules) if isinstance(m, nn.BatchNorm2d)), default=None)
    if last_bn is None and mult != 1.0:
        raise ExportError("cannot fold a scale into a sequence without a batch norm")
    c, i = in_scale, 0
    while i < len(modules):
        m = modules[i]
        if isinstance(m, nn.Conv2d):
            bn = modules[i + 1] if i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm2d) else None
            if bn is None:
                if getattr(m, "parallel", None) is not None:
                    raise ExportError("a parallel convolution needs a batch norm after it")
                if m.bias is not None and c != 1.0:
                    raise ExportError("cannot carry a scale through a biased convolution without a batch norm")
                if g.shared.folded_scale(m.weight) is not None and not private_weight(m):
                    raise ExportError("internal error: a shared convolution stored with its norm folded in runs "
                                      "without that norm")
                x = g.conv(x, m, weight=conv_weight(m).detach().cpu().numpy() if private_weight(m) else None)
            else:
                k = mult if i + 1 == last_bn else 1.0
                scale, shift = bn_fold(bn, c, k)
                if m.bias is not None:
                    shift = shift + scale / c * m.bias.detach().double().cpu().numpy()
                parallel = getattr(m, "parallel", None)
                own_norm = parallel is None and _as_shared(g, m, scale)
                if g.keeps_shared(conv_weight(m)) or own_norm:
                    # universal: shared weight, private affine (or bias)
                    if m.bias is not None:
                        raise ExportError("universal convolutions with a bias are not supported")
                    x = _shared_conv(g, m, parallel, x, scale, shift, own_norm)
                elif parallel is not None:
                    raise ExportError("a parallel convolution beside a task-owned one is not supported")
                else:  # task-owned (or a shared weight the graph copies): fold the batch norm into the convolution
                    g.copied(conv_weight(m))
                    w = conv_weight(m).detach().double().cpu().numpy() * scale[:, None, None, None]
                    x = g.conv(x, m, weight=w.astype(np.float32), bias=shift.astype(np.float32))
                c = 1.0 / k
                i += 1
        elif isinstance(m, nn.BatchNorm2d):
            k = mult if i == last_bn else 1.0
            x = g.affine(x, *bn_fold(m, c, k))
            c = 1.0 / k
        elif isinstance(m, nn.ReLU):
            x = g.relu(x)
        elif isinstance(m, nn.ReLU6):  # relu6(c * v) = c * clip(v, 0, 6 / c)
            x = g.clip(x, 6.0 / check_positive(c, "the scale before a ReLU6"))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Identity)):
            x = g.pool(x, m)
        else:
            raise ExportError(f"cannot export module {type(m).__name__}")
        i += 1
    return x, c


def _shared_conv(g: GraphBuilder, conv: nn.Conv2d, parallel: nn.Conv2d | None, x: str, scale: np.ndarray,
                 shift: np.ndarray, own_norm: bool) -> str:
    """``scale * conv(x) + shift`` (per channel) over the shared weight, which holds the backbone norm's scale ``a``
    folded in where :class:`SharedWeights` folded one: the affine is divided by it, and where that leaves a scale
    of 1 (``own_norm``, from :func:`_as_shared`: the backbone's own norm, nothing to rescale) the shift is the
    convolution's bias and no pass follows."""
    if own_norm:
        return g.conv(x, conv, bias=shift.astype(np.float32))
    a = g.shared.folded_scale(conv.weight)
    if a is not None:
        scale = scale / a
    y = g.conv(x, conv)
    if parallel is not None:  # the adapter's output joins the shared one's, so it takes the same scale
        w = parallel.weight.detach().double().cpu().numpy()
        if a is not None:
            w = w * a[:, None, None, None]
        y = g.add([y, g.conv(x, parallel, weight=w.astype(np.float32))])
    return g.affine(y, scale, shift)


def _as_shared(g: GraphBuilder, conv: nn.Conv2d, scale: np.ndarray) -> bool:
    """Whether a shared convolution the graph may copy runs as well from the shared weight: its norm's scale is the
    one folded into it, so no pass follows it (a copy would cost bytes and buy nothing)."""
    a = g.shared.folded_scale(conv_weight(conv))
    return a is not None and np.allclose(scale / a, 1.0, rtol=1e-6, atol=0.0)


def choose_fused(net: nn.Module, shared: SharedWeights, input_shape: tuple[int, ...], budget_bytes: int
                 ) -> frozenset[str]:
    """The shared convolutions whose weights a task graph copies, with its batch norm folded in, within
    ``budget_bytes``. A shared convolution's per-task batch norm runs as a pass of its own over the conv's output
    (and keeps ONNX Runtime from fusing the ReLU or residual add into the conv); a fused copy costs its weight's
    bytes instead. So the convolutions with the largest output per weight element go first: the stem and the
    first blocks, large activations from small weights. Only convolutions ``net`` runs on ``input_shape`` count."""
    if budget_bytes <= 0:
        return frozenset()
    outputs: dict[str, int] = {}
    hooks = []
    for m in net.modules():
        name = shared.name_of(conv_weight(m)) if isinstance(m, nn.Conv2d) else None
        if name is not None and getattr(m, "parallel", None) is None:
            hooks.append(m.register_forward_hook(
                lambda _m, _x, y, name=name: outputs.__setitem__(name, outputs.get(name, 0) + y[0].numel())))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, *input_shape, device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    chosen, left = [], budget_bytes
    for name in sorted(outputs, key=lambda n: (-outputs[n] / shared.tensors[n].size, n)):
        if shared.tensors[name].nbytes <= left:
            chosen.append(name)
            left -= shared.tensors[name].nbytes
    return frozenset(chosen)


def _main_path(block: nn.Module) -> list[nn.Module]:
    if isinstance(block, MBConvBlock):
        return block.main_path()
    if isinstance(block, Bottleneck):
        return [block.conv1, block.bn1, nn.ReLU(), block.conv2, block.bn2, nn.ReLU(), block.conv3, block.bn3]
    if isinstance(block, (BasicBlock, DecathlonBlock)):
        return [block.conv1, block.bn1, nn.ReLU(), block.conv2, block.bn2]
    raise ExportError(f"cannot export block type {type(block).__name__}")


def passes_input(block: nn.Module) -> bool:
    """Whether the block's shortcut carries its input with no affine that could absorb a scale."""
    if isinstance(block, DecathlonBlock):
        return True
    if isinstance(block, MBConvBlock):
        return block.residual
    return getattr(block, "downsample", None) is None


def emit_block(g: GraphBuilder, block: nn.Module, x: str, in_scale: float, mult: float) -> str:
    """``mult * block(in_scale * x)``; for a pass-through shortcut, ``mult * in_scale`` must be 1."""
    y, _ = emit_sequence(g, _main_path(block), x, in_scale, mult)
    if passes_input(block) and abs(mult * in_scale - 1.0) > 1e-9:
        raise ExportError("internal error: a pass-through shortcut was given a scale")
    if isinstance(block, MBConvBlock):  # a linear output: the sum, or the projection alone
        return g.add([y, x]) if block.residual else y
    if isinstance(block, DecathlonBlock):
        r = g.pool(x, block.pool)
        if block.extra_channels:
            r = g.pad_channels(r, block.extra_channels)
    elif block.downsample is not None:
        r, _ = emit_sequence(g, list(block.downsample), x, in_scale, mult)
    else:
        r = x
    return g.relu(g.add([y, r]))


def emit_head(g: GraphBuilder, head_norm: nn.Module, classifier: nn.Linear, x: str, c: float) -> None:
    """Pooling and classifier, with the input scale and the head norm folded into the classifier (a head of layers,
    EfficientNet's 1x1 conv + BN + ReLU6, runs before pooling)."""
    if isinstance(head_norm, nn.Sequential):
        x, c = emit_sequence(g, list(head_norm), x, c)
        head_norm = nn.Identity()
    w = classifier.weight.detach().double().cpu().numpy()
    b = classifier.bias.detach().double().cpu().numpy() if classifier.bias is not None else np.zeros(w.shape[0])
    if isinstance(head_norm, nn.BatchNorm2d):
        scale, shift = bn_fold(head_norm, c)
    elif isinstance(head_norm, nn.Identity):
        scale, shift = np.full(w.shape[1], c), np.zeros(w.shape[1])
    else:
        raise ExportError(f"cannot export head norm {type(head_norm).__name__}")
    g.classifier(x, w * scale[None, :], b + w @ shift)


def private_weight(conv: nn.Conv2d) -> bool:
    """Whether the convolution applies a weight other than its ``weight`` (e.g. filter attention's)."""
    return conv_weight(conv) is not conv.weight


def conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weight a convolution applies: its ``effective_weight()`` where it has one (e.g. filter attention)."""
    effective = getattr(conv, "effective_weight", None)
    return effective() if effective is not None else conv.weight
