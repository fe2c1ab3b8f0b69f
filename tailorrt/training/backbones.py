"""Universal backbones split into units (the stem, then one unit per residual block).

Builders register by name (like torchvision's ``get_model``) and are described by data
(:class:`BackboneSpec`); the blocks are torchvision's own ``BasicBlock``/``Bottleneck``, so a
torchvision ResNet checkpoint maps onto the units key by key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from tailorrt.backbone_spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec  # noqa: F401 (re-exported)
from tailorrt.errors import CheckpointError, ConfigError
from tailorrt.training.io import load_state_file

EMBEDDED = "embedded"


_BUILDERS: dict[str, Callable[[], BackboneSpec]] = {}


def register(fn: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
    """Register a spec builder under its function name (dashes for underscores)."""
    _BUILDERS[fn.__name__.replace("_", "-")] = fn
    return fn


def available() -> list[str]:
    return sorted(_BUILDERS)


def get_spec(name: str) -> BackboneSpec:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(available())}")
    return _BUILDERS[name]()


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


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck, "decathlon": DecathlonBlock}


class UniversalBackbone(nn.Module):
    """A ResNet as a stem followed by residual blocks; every one of them is a *unit*."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = _make_stem(spec)
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
        self.blocks = nn.ModuleList(blocks)
        self.head_norm = nn.BatchNorm2d(channels) if spec.head_norm else nn.Identity()
        self.feature_dim = channels
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


def pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def _make_stem(spec: BackboneSpec) -> nn.Sequential:
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


def load_weights(model: UniversalBackbone, state: dict[str, torch.Tensor], source: str) -> None:
    """Load unit weights from our own, torchvision's or NetTailor's WRN key names; mismatches raise
    CheckpointError."""
    convert = None
    if any(k.startswith("layers.") for k in state):
        convert = decathlon_key_map
    elif any(k.startswith(("layer1.", "conv1.")) for k in state):
        convert = torchvision_key_map(model.spec)
    if convert is not None:
        state = {new: v for k, v in state.items() if (new := convert(k)) is not None}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
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

    kind: str  # "embedded" | "file" | "torchvision" | "random"
    detail: str = ""


def build_backbone(name: str, *, weights: str | Path | None = None, pretrained: bool = True
                   ) -> tuple[UniversalBackbone, BackboneSource]:
    """Build a backbone by name and load its weights.

    ``weights``: a local safetensors/``.pth`` checkpoint. Without it, ``embedded`` loads the
    packaged weights and torchvision ResNets download their ImageNet weights enum (a clear error
    when offline); ``pretrained=False`` keeps the random initialisation.
    """
    spec = get_spec(name)
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
