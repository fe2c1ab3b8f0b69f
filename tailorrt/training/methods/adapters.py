"""Parallel residual adapters (Rebuffi, Bilen and Vedaldi, "Efficient parametrization of multi-domain deep neural
networks", CVPR 2018), a baseline of the NetTailor paper's Visual Decathlon table.

Beside every 3x3 convolution of the frozen backbone the task owns a 1x1 convolution on the same input,
with the same stride, whose output is added to the shared convolution's: ``y = W * x + A * x``. The task
also owns every batch norm (affine weights and statistics) and the classifier. The adapters start at
zero, so training starts from the backbone's own function. In the ONNX graph each adapted convolution is
the shared ``Conv`` (universal weights, by reference), the task's 1x1 ``Conv`` and an ``Add``, followed by
the task's batch norm as a per-channel affine.

Name: ``adapters``. Training: a linear head on the frozen features, then the adapters, the batch norms and
the head together (the tuning schedule's ``head`` and ``tune`` phases).
"""

from __future__ import annotations

import torch
from torch import nn

from tailorrt.training.backbones import UniversalBackbone
from tailorrt.training.methods.base import register
from tailorrt.training.methods.parts.student import SharedConv2d
from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec
from tailorrt.training.methods.tuning_method import Runner, TuningMethod


class ParallelAdapterConv(SharedConv2d):
    """The backbone's 3x3 convolution (its frozen, shared weight) plus the task's 1x1 convolution ``parallel``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv)
        self.parallel = nn.Conv2d(conv.in_channels, conv.out_channels, 1, conv.stride, 0, groups=conv.groups,
                                  bias=False, device=conv.weight.device)
        nn.init.zeros_(self.parallel.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias) + self.parallel(x)


def adaptable(conv: nn.Module) -> bool:
    """A 3x3 convolution whose output a strided 1x1 convolution of the same input matches in size."""
    return (type(conv) is nn.Conv2d and tuple(conv.kernel_size) == (3, 3) and tuple(conv.padding) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.padding_mode == "zeros")


def add_adapters(unit: nn.Module) -> int:
    """Put an adapter beside every adaptable convolution of ``unit``, in place; returns how many."""
    targets = [(name, m) for name, m in unit.named_modules() if adaptable(m)]
    for name, m in targets:
        parent, _, attr = name.rpartition(".")
        setattr(unit.get_submodule(parent) if parent else unit, attr, ParallelAdapterConv(m))
    return len(targets)


class AdapterNet(TunedNet):
    """A :class:`TunedNet` with the task's own batch norms and an adapter beside every 3x3 convolution."""

    def __init__(self, backbone: UniversalBackbone, num_classes: int, spec: TuneSpec) -> None:
        super().__init__(backbone, num_classes, spec)
        self.adapters = sum(add_adapters(unit) for unit in self.units)

    def _owned_prefixes(self) -> list[str]:
        adapters = [f"{name}.parallel." for name, m in self.named_modules() if isinstance(m, ParallelAdapterConv)]
        return super()._owned_prefixes() + adapters


class ResidualAdapters(TuningMethod):
    family = "adapters"
    names = ("adapters",)
    syntax = "adapters"
    help = ("parallel residual adapters: a task-owned 1x1 convolution beside each 3x3 convolution of the frozen "
            "backbone, with the task's own batch norms (Rebuffi et al. 2018)")
    examples = ("adapters",)
    blocks = ("basic", "bottleneck", "decathlon")
    why_not = {"mbconv": "residual adapters sit beside full 3x3 convolutions, and an MBConv block's spatial "
                         "convolution is depthwise (a 1x1 depthwise adapter would be a per-channel scale, which "
                         "scale-shift trains)"}
    candidates = ("adapters",)

    def network(self, backbone: UniversalBackbone, classes: int, spec: TuneSpec) -> TunedNet:
        return AdapterNet(backbone, classes, spec) if spec.bn == "affine" else TunedNet(backbone, classes, spec)

    def spec(self, name: str, num_units: int) -> TuneSpec:
        return TuneSpec(bn="affine")

    def fit(self, name: str, run: Runner) -> tuple[TunedNet, dict]:
        head = run.net(TuneSpec())  # a linear head on the frozen features first
        run.train(head, run.cfg.head)
        net = run.net(self.spec(name, run.backbone.num_units), head_from=head)
        run.train(net, run.cfg.tune)
        return net, {"metrics": {"adapters": net.adapters}}


register(ResidualAdapters())
