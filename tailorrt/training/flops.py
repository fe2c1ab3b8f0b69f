"""Parameter and FLOP accounting per block, by tracing a module once with forward hooks.

FLOPs are counted as multiply-accumulates of convolutions and linear layers plus two per
output element of batch norms, as the NetTailor reference does.
"""

from __future__ import annotations

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    """Number of parameters (frozen or not) of a module."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass for a single example (batch dimension 1)."""
    total = 0

    def hook(m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * out.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return int(total)
