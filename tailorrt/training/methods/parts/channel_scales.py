"""Channel attention's scales: a trainable scale on every convolution's output channels, or
on each of its in x out filters, a penalty that pushes the useless ones down, and pruning of the channels
it switched off.

Where the scale sits. The per-channel scale multiplies the output of each convolution's batch norm,
``a * BN(conv(x))``. Placed before the batch norm it would cancel whenever the statistics are
re-estimated (train mode normalises ``a * z`` back to ``z``), and a scale of 0 would still leave the
norm's shift. After the norm, ``a = 0`` is an exact zero: a channel inside a block whose scale falls
below the threshold can be removed with its filter in the next convolution, and in eval mode
``a * BN`` folds exactly into the norm's affine, so the exported task costs what a scale-shift task
costs. The per-filter option (the source report's own form) multiplies the weights,
``conv(x, W * a)`` with ``a`` of shape (out, in, 1, 1); deployed, such a task owns a private copy of
every convolution.

Method names: ``attention[:channel|filter][:l1|l2|distance-to-1][:prune]`` (defaults: channel, l1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from tailorrt.errors import ConfigError, PackError
from tailorrt.training.backbones import DecathlonBlock
from tailorrt.training.methods.parts.student import SharedConv2d
from tailorrt.training.onnx_layers import conv_weight

GRANULARITIES = ("channel", "filter")
PENALTIES = ("l1", "l2", "distance-to-1")
PHASE_LETTERS = {"F": "head", "A": "attention", "B": "batch-norm", "P": "prune"}
# the convolutions whose outputs only the next convolution of the same block reads: (producer, norm, consumer)
INTERNAL = {BasicBlock: (("conv1", "bn1", "conv2"),), DecathlonBlock: (("conv1", "bn1", "conv2"),),
            Bottleneck: (("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3"))}


@dataclass(frozen=True)
class AttentionMethod:
    """What an ``attention...`` method name chooses."""

    granularity: str = "channel"
    penalty: str = "l1"
    prune: bool = False

    @classmethod
    def parse(cls, method: str) -> AttentionMethod | None:
        """The options of ``attention[:channel|filter][:l1|l2|distance-to-1][:prune]``; None for other methods."""
        name, *opts = method.split(":")
        if name != "attention":
            return None
        found: dict[str, object] = {}
        for opt in opts:
            key = ("granularity" if opt in GRANULARITIES else "penalty" if opt in PENALTIES
                   else "prune" if opt == "prune" else None)
            if key is None or key in found:
                raise ConfigError(f"method {method!r}: options are one of {'/'.join(GRANULARITIES)}, one of "
                                  f"{'/'.join(PENALTIES)} and prune, e.g. attention:l1:prune")
            found[key] = True if key == "prune" else opt
        out = cls(**found)
        if out.prune and out.granularity != "channel":
            raise ConfigError(f"method {method!r}: pruning removes whole channels; use channel attention")
        return out


@dataclass
class AttentionConfig:
    """The attention schedule: one letter per epoch (F head, A attention, B batch norms; P prunes, no epoch)."""

    schedule: str = "FFAAABAAABAA"  # the source report's schedule
    penalty_weight: float = 1e-3  # lambda: the loss adds lambda * sum of the penalty over every scale
    attention_lr: float = 0.1  # scales move slowly at fine-tuning rates (0.02 left them within 4% of 1)
    bn_lr: float = 0.01
    prune_below: float = 0.05  # with :prune, channels whose |scale| ends below this are removed
    prune_schedule: str = "PB"  # appended when :prune is asked for and the schedule has no P

    def __post_init__(self) -> None:
        bad = set(self.schedule + self.prune_schedule) - set(PHASE_LETTERS)
        if bad or not self.schedule:
            raise ConfigError(f"attention schedule {self.schedule!r}: use the letters F (head), A (attention), "
                              "B (batch norms) and P (prune), e.g. FFAAABAAABAA")
        if self.penalty_weight < 0 or self.prune_below < 0:
            raise ConfigError("the attention penalty weight and the prune threshold cannot be negative")

    def steps(self, prune: bool) -> list[tuple[str, int]]:
        """The schedule as (letter, epochs) runs, with the prune step where asked for."""
        schedule = self.schedule if not prune or "P" in self.schedule else self.schedule + self.prune_schedule
        if not prune:
            schedule = schedule.replace("P", "")
        runs: list[tuple[str, int]] = []
        for letter in schedule:
            if runs and runs[-1][0] == letter and letter != "P":
                runs[-1] = (letter, runs[-1][1] + 1)
            else:
                runs.append((letter, 1))
        return runs

    def to_json(self) -> dict:
        return asdict(self)


class AttentiveBatchNorm2d(nn.BatchNorm2d):
    """``attention * BN(x)``: the task's own batch norm followed by a trainable per-channel scale."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.running_mean.device)
        self.load_state_dict(bn.state_dict())
        self.attention = nn.Parameter(torch.ones(bn.num_features, device=bn.running_mean.device))
        self.train(bn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.attention.view(1, -1, 1, 1)


class AttentiveConv2d(SharedConv2d):
    """A convolution with the backbone's (shared, frozen) weight times a trainable scale per in x out filter."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv)
        self.attention = nn.Parameter(torch.ones(conv.out_channels, conv.in_channels // conv.groups, 1, 1,
                                                 device=conv.weight.device))

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


def add_attention(unit: nn.Module, granularity: str) -> None:
    """Replace, in place, every batch norm (channel) or every convolution (filter) of ``unit`` by its attentive
    form. The batch norms must already be the task's own copies."""
    kind = nn.BatchNorm2d if granularity == "channel" else nn.Conv2d
    wrap = AttentiveBatchNorm2d if granularity == "channel" else AttentiveConv2d
    targets = [(name, m) for name, m in unit.named_modules() if type(m) is kind]
    for name, m in targets:
        parent, _, attr = name.rpartition(".")
        setattr(unit.get_submodule(parent) if parent else unit, attr, wrap(m))


def attention_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [m.attention for m in module.modules() if isinstance(m, (AttentiveBatchNorm2d, AttentiveConv2d))]


def penalty(params: list[nn.Parameter], kind: str) -> torch.Tensor:
    """The sum over every scale of ``|a|`` (l1), ``a^2`` (l2) or ``(a - 1)^2`` (distance-to-1).

    The source report writes its distance-to-1 term with a minus sign, to push scales away from 1; as a
    penalty that is unbounded below, so here it penalises the distance (a pull towards the backbone)."""
    if kind not in PENALTIES:
        raise ConfigError(f"penalty must be one of {', '.join(PENALTIES)}, not {kind!r}")
    terms = []
    for a in params:
        terms.append(a.abs().sum() if kind == "l1" else a.square().sum() if kind == "l2" else (a - 1).square().sum())
    return torch.stack(terms).sum() if terms else torch.zeros(())


def prunable(block: nn.Module) -> tuple[tuple[str, str, str], ...]:
    """The (producer, norm, consumer) triples of a block whose channels can be removed."""
    return next((v for cls, v in INTERNAL.items() if isinstance(block, cls)), ())


def _sliced_conv(conv: nn.Conv2d, weight: torch.Tensor) -> nn.Conv2d:
    """A private frozen convolution like ``conv`` with another weight (fewer in or out channels)."""
    if conv.groups != 1 or conv.bias is not None:
        raise ConfigError("pruning supports convolutions without groups or bias")
    out = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=False, padding_mode=conv.padding_mode, device="meta")
    out.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    return out


def prune_channels(block: nn.Module, norm: str, keep: torch.Tensor) -> None:
    """Remove the channels of ``block.<norm>`` (an attentive batch norm) where ``keep`` is False, with their rows
    in the convolution before it and their columns in the one after it. The norm records ``keep``."""
    triple = next((t for t in prunable(block) if t[1] == norm), None)
    bn = getattr(block, norm, None)
    if triple is None or not isinstance(bn, AttentiveBatchNorm2d):
        raise PackError(f"{type(block).__name__}.{norm} is not a prunable attentive batch norm")
    keep = keep.to(torch.bool).flatten()
    if keep.numel() != bn.num_features or not bool(keep.any()):
        raise PackError(f"a keep mask of {keep.numel()} channels ({int(keep.sum())} kept) does not fit "
                        f"{norm} of {bn.num_features}")
    producer, consumer = getattr(block, triple[0]), getattr(block, triple[2])
    idx = keep.nonzero().flatten().to(bn.running_mean.device)
    setattr(block, triple[0], _sliced_conv(producer, conv_weight(producer).index_select(0, idx)))
    setattr(block, triple[2], _sliced_conv(consumer, conv_weight(consumer).index_select(1, idx)))
    small = AttentiveBatchNorm2d(nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, device=idx.device).train(bn.training))
    state = {k: (v.index_select(0, idx) if v.dim() == 1 else v) for k, v in bn.state_dict().items()}
    small.load_state_dict(state)
    small.register_buffer("keep", keep.clone())
    setattr(block, norm, small)


@dataclass(frozen=True)
class Pruning:
    """What ``:prune`` cut: of how many prunable channels, how many, below which |scale|; and the validation
    accuracy right before and after (before the recovery epochs)."""

    prunable_channels: int
    pruned_channels: int
    threshold: float
    val_accuracy_before: float | None = None
    val_accuracy_after: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> Pruning:
        return cls(data["prunable_channels"], data["pruned_channels"], data["threshold"],
                   data.get("val_accuracy_before"), data.get("val_accuracy_after"))


@dataclass(frozen=True)
class UnitScales:
    """A unit's attention scales in one line: how many, their mean |a|, the fraction under the prune threshold."""

    unit: int
    n: int
    mean: float
    low: float


def prune_by_scale(units: nn.ModuleList, below: float) -> Pruning:
    """Prune every block's internal channels whose |attention| is below ``below`` (keeping at least the largest
    one per norm); returns how many channels were prunable and how many went."""
    total = removed = 0
    for unit in units:
        for _, norm, _ in prunable(unit):
            bn = getattr(unit, norm)
            if not isinstance(bn, AttentiveBatchNorm2d) or hasattr(bn, "keep"):
                continue
            scale = bn.attention.detach().abs()
            keep = scale >= below
            keep[scale.argmax()] = True
            total += keep.numel()
            removed += int((~keep).sum())
            if not bool(keep.all()):
                prune_channels(unit, norm, keep)
    return Pruning(total, removed, below)


def attention_summary(units: nn.ModuleList, below: float) -> list[UnitScales]:
    """Per unit: how many scales, their mean |a|, and the fraction below ``below`` (for training histories)."""
    rows = []
    for i, unit in enumerate(units):
        scales = [p.detach().abs().flatten() for p in attention_parameters(unit)]
        if scales:
            a = torch.cat(scales)
            low = float((a < below).float().mean())
            rows.append(UnitScales(i, a.numel(), round(float(a.mean()), 4), round(low, 4)))
    return rows
