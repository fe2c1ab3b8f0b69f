"""Task networks written as ONNX graphs: only what the pruned task runs, attention folded away.

For a NetTailor student, layer ``l`` computes ``u_l = relu(sum_i alpha_i B_i(...))``. Each kept
block is emitted with its output multiplied by ``alpha_i / c_l`` folded into its last batch norm
(private to the task), so the layer is a plain ``Add`` + ``Relu`` and the graph holds no ``Mul``.
Blocks whose shortcut carries the input unchanged (identity, or average-pool + zero-pad) cannot
absorb a scale; for them the layer's output scale ``c_l`` is chosen as ``alpha_0 * c_{l-1}`` so the
shortcut needs no multiply either. The head folds the last scale (and the head norm, if any) into
the task's classifier. Pruned blocks and blocks with a zero alpha are simply not emitted.
"""

from __future__ import annotations

import numpy as np
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from tailorrt.attention import conv_weight
from tailorrt.backbones import DecathlonBlock
from tailorrt.errors import ExportError
from tailorrt.export.graph import INPUT, GraphBuilder, bn_fold, check_positive
from tailorrt.student import Student
from tailorrt.tuned import TunedNet


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
                if m.bias is not None and c != 1.0:
                    raise ExportError("cannot carry a scale through a biased convolution without a batch norm")
                private = conv_weight(m) is not m.weight
                x = g.conv(x, m, weight=conv_weight(m).detach().cpu().numpy() if private else None)
            else:
                k = mult if i + 1 == last_bn else 1.0
                scale, shift = bn_fold(bn, c, k)
                if m.bias is not None:
                    shift = shift + scale / c * m.bias.detach().double().cpu().numpy()
                if g.shared.name_of(conv_weight(m)) is not None:  # universal: shared weight, private affine
                    if m.bias is not None:
                        raise ExportError("universal convolutions with a bias are not supported")
                    x = g.affine(g.conv(x, m), scale, shift)
                else:  # task-owned: fold the batch norm into the convolution
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
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Identity)):
            x = g.pool(x, m)
        else:
            raise ExportError(f"cannot export module {type(m).__name__}")
        i += 1
    return x, c


def _main_path(block: nn.Module) -> list[nn.Module]:
    if isinstance(block, Bottleneck):
        return [block.conv1, block.bn1, nn.ReLU(), block.conv2, block.bn2, nn.ReLU(), block.conv3, block.bn3]
    if isinstance(block, (BasicBlock, DecathlonBlock)):
        return [block.conv1, block.bn1, nn.ReLU(), block.conv2, block.bn2]
    raise ExportError(f"cannot export block type {type(block).__name__}")


def passes_input(block: nn.Module) -> bool:
    """Whether the block's shortcut carries its input with no affine that could absorb a scale."""
    if isinstance(block, DecathlonBlock):
        return True
    return getattr(block, "downsample", None) is None


def emit_block(g: GraphBuilder, block: nn.Module, x: str, in_scale: float, mult: float) -> str:
    """``mult * block(in_scale * x)``; for a pass-through shortcut, ``mult * in_scale`` must be 1."""
    y, _ = emit_sequence(g, _main_path(block), x, in_scale, mult)
    if isinstance(block, DecathlonBlock):
        r = g.pool(x, block.pool)
        if block.extra_channels:
            r = g.pad_channels(r, block.extra_channels)
    elif block.downsample is not None:
        r, _ = emit_sequence(g, list(block.downsample), x, in_scale, mult)
    else:
        r = x
    if passes_input(block) and abs(mult * in_scale - 1.0) > 1e-9:
        raise ExportError("internal error: a pass-through shortcut was given a scale")
    return g.relu(g.add([y, r]))


def emit_student(g: GraphBuilder, student: Student) -> None:
    """The pruned student from ``input`` to ``logits``."""
    student.eval()
    x, c = emit_sequence(g, list(student.stem), INPUT, 1.0)
    outs: list[tuple[str, float] | None] = [(x, c)]
    for l, layer in enumerate(student.layers, start=1):
        alphas = layer.alphas().detach().cpu().double().tolist()
        recent = outs[::-1][: len(layer.proxies) + 1]
        kept = [(i, recent[max(i - 1, 0)]) for i in range(len(alphas))
                if bool(layer.keep[i]) and recent[max(i - 1, 0)] is not None and alphas[i] > 0]
        if not kept:
            outs.append(None)
            continue
        universal = kept[0][0] == 0
        c_out = alphas[0] * kept[0][1][1] if universal and passes_input(layer.universal) else 1.0
        check_positive(c_out, f"the output scale of layer {l}")
        terms = []
        for i, (v, c_src) in kept:
            mult = alphas[i] / c_out
            if i == 0:
                terms.append(emit_block(g, layer.universal, v, c_src, mult))
            else:
                proxy = layer.proxies[i - 1]
                terms.append(emit_sequence(g, [proxy.pool, *proxy.body], v, c_src, mult)[0])
        out = terms[0] if len(terms) == 1 and universal else g.relu(g.add(terms))  # a block ends in ReLU already
        outs.append((out, c_out))
    if outs[-1] is None:
        raise ExportError("the pruned network has no path to the classifier")
    emit_head(g, student.head_norm, student.classifier, *outs[-1])


def emit_head(g: GraphBuilder, head_norm: nn.Module, classifier: nn.Linear, x: str, c: float) -> None:
    """Pooling and classifier, with the input scale and the head norm folded into the classifier."""
    w = classifier.weight.detach().double().cpu().numpy()
    b = classifier.bias.detach().double().cpu().numpy() if classifier.bias is not None else np.zeros(w.shape[0])
    if isinstance(head_norm, nn.BatchNorm2d):
        scale, shift = bn_fold(head_norm, c)
    elif isinstance(head_norm, nn.Identity):
        scale, shift = np.full(w.shape[1], c), np.zeros(w.shape[1])
    else:
        raise ExportError(f"cannot export head norm {type(head_norm).__name__}")
    g.classifier(x, w * scale[None, :], b + w @ shift)


def emit_tuned(g: GraphBuilder, net: TunedNet) -> None:
    """A tuned network: its units in order (shared ones keep the backbone's weights), then the head."""
    net.eval()
    x, c = emit_sequence(g, list(net.units[0]), INPUT, 1.0)
    for block in net.units[1:]:
        x = emit_block(g, block, x, c, 1.0 / c)
        c = 1.0
    emit_head(g, net.head_norm, net.classifier, x, c)


def emit_network(g: GraphBuilder, net: nn.Module) -> None:
    """Any task's network, from ``input`` to ``logits``."""
    if isinstance(net, Student):
        emit_student(g, net)
    elif isinstance(net, TunedNet):
        emit_tuned(g, net)
    else:
        raise ExportError(f"cannot export a {type(net).__name__}")
