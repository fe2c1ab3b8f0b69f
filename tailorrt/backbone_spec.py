"""What a backbone is, as its ``backbone.json`` records it: the spec to rebuild its units and how its inputs are
normalised. Plain data (no torch), so that serving and ``tailor info`` read it without the training side; the
network itself is :class:`tailorrt.training.backbones.UniversalBackbone`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tailorrt.errors import ConfigError


@dataclass(frozen=True)
class BlockFamily:
    """What a family of residual blocks means to the spec, outside torch (its modules:
    ``tailorrt.training.backbones.BLOCKS``)."""

    expansion: int  # output channels per width (torchvision's ``expansion``; tests/test_backbones.py checks them)
    # no activation after the residual add (MBConv): a NetTailor layer combines its blocks' outputs as they do,
    # linearly, instead of relu(sum), and their scale is the backbone's own
    linear_output: bool = False


BLOCK_FAMILIES = {"basic": BlockFamily(1), "bottleneck": BlockFamily(4), "decathlon": BlockFamily(1),
                  "mbconv": BlockFamily(1, linear_output=True)}
STEMS = ("imagenet", "cifar", "efficientnet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild a backbone's units, and how its inputs are normalised."""

    name: str
    block: str  # "basic" | "bottleneck" | "decathlon" | "mbconv"
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    strides: tuple[int, ...]
    stem: str  # "imagenet" (7x7/2 + maxpool) | "cifar" (3x3/1) | "efficientnet" (3x3/2 SAME, ReLU6)
    stem_width: int
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    torchvision_weights: str | None = None  # e.g. "ResNet34_Weights.IMAGENET1K_V1"
    head_norm: bool = False  # a BN on the last unit's output before pooling (Decathlon WRN-26's ends_bn)
    kernels: tuple[int, ...] = ()  # mbconv: the depthwise kernel of each stage
    expansions: tuple[int, ...] = ()  # mbconv: the expansion ratio of each stage
    head_width: int = 0  # mbconv: a 1x1 conv + BN + ReLU6 to this many channels before pooling (EfficientNet's head)
    bn_eps: float = 1e-5  # every batch norm's eps (1e-3 in the TensorFlow-trained EfficientNets)

    def __post_init__(self) -> None:
        if self.block not in BLOCK_FAMILIES:
            raise ConfigError(f"block must be one of {', '.join(BLOCK_FAMILIES)}, not {self.block!r}")
        if not (len(self.widths) == len(self.depths) == len(self.strides)):
            raise ConfigError("widths, depths and strides must have one entry per stage")
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {', '.join(STEMS)}, not {self.stem!r}")
        if self.input_size < 8:
            raise ConfigError(f"input size must be at least 8 pixels, not {self.input_size}")
        if self.block == "mbconv" and not (len(self.kernels) == len(self.expansions) == len(self.widths)):
            raise ConfigError("an mbconv backbone needs one kernel and one expansion ratio per stage")

    @property
    def num_units(self) -> int:
        """The stem plus one unit per residual block."""
        return 1 + sum(self.depths)

    @property
    def family(self) -> BlockFamily:
        return BLOCK_FAMILIES[self.block]

    @property
    def linear_output(self) -> bool:
        """Whether a block's output is linear (MBConv) rather than ReLU'd (ResNet)."""
        return self.family.linear_output

    @property
    def feature_dim(self) -> int:
        """Channels of the classifier's input: the head's, else the last unit's."""
        return self.head_width or self.widths[-1] * self.family.expansion

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BackboneSpec:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)
