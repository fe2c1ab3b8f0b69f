"""Tasks that own whole units or the batch norms of the backbone: flex-tuning and the classic transfer baselines.

A :class:`TunedNet` runs the backbone's units in order (optionally only up to an earlier unit) and a
classifier. Each unit is either *shared* (the backbone's own frozen conv weights, the same Parameter
objects) or *owned* by the task (a trainable copy). A :class:`TuneSpec` says which:

- ``linear[:U]``: nothing owned but the classifier, on the frozen features of the last unit (or unit U);
- ``finetune-last:K``: the last K units; ``finetune-all``: every unit;
- ``scale-shift``: the batch-norm affine weights and statistics of every unit, plus the classifier;
- ``flex`` and its faster variants: exactly one unit (or every unit when that wins, see
  :mod:`tailorrt.training.methods.flex`);
- ``adapters``: the batch norms of every unit and a 1x1 convolution beside each 3x3 one
  (see :mod:`tailorrt.training.methods.adapters`), plus the classifier;
- ``attention...``: the batch norms of every unit, with a trainable scale per channel or per filter
  (see :mod:`tailorrt.training.methods.parts.channel_scales`), plus the classifier; pruned channels are gone from the
  network.

Shared units keep the backbone's batch-norm statistics and stay in eval mode while training, except
under ``scale-shift``, where the task re-estimates them. The task owns exactly :meth:`TunedNet.task_state`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from tailorrt.errors import ConfigError, PackError
from tailorrt.records import Metrics
from tailorrt.training.backbones import UniversalBackbone, pool
from tailorrt.training.flops import count_flops, count_params
from tailorrt.training.methods.parts.channel_scales import GRANULARITIES, add_attention, prune_channels
from tailorrt.training.methods.parts.student import share_frozen, share_frozen_own_norms

BN_MODES = ("frozen", "affine")


@dataclass(frozen=True)
class TuneSpec:
    """Which parts of the backbone a task owns. Units are numbered 0 (stem) .. L (last block)."""

    units: tuple[int, ...] = ()
    bn: str = "frozen"  # frozen: the backbone's batch norms; affine: the task's own affine and statistics
    feature_unit: int | None = None  # the classifier reads this unit's output; None: the last unit
    attention: str | None = None  # channel | filter: trainable scales on every conv (needs bn="affine")

    def __post_init__(self) -> None:
        if self.bn not in BN_MODES:
            raise ConfigError(f"bn must be one of {', '.join(BN_MODES)}, not {self.bn!r}")
        if self.attention is not None and (self.attention not in GRANULARITIES or self.bn != "affine"):
            raise ConfigError(f"attention must be one of {', '.join(GRANULARITIES)}, with the task's own batch norms")

    def to_json(self) -> dict:
        return {"units": list(self.units), "bn": self.bn, "feature_unit": self.feature_unit,
                "attention": self.attention}

    @classmethod
    def from_json(cls, data: dict) -> TuneSpec:
        return cls(tuple(int(u) for u in data["units"]), data["bn"], data.get("feature_unit"), data.get("attention"))



@dataclass(frozen=True)
class UnitUse:
    """Of a tuned task's metrics: how many backbone units its network runs, and which of them it owns a copy of."""

    used: int
    owned: tuple[int, ...]

    @classmethod
    def of(cls, metrics: Metrics) -> UnitUse:
        return cls(int(metrics.extra["units_used"]), tuple(int(u) for u in metrics.extra["units_owned"]))

class TunedNet(nn.Module):
    """The backbone's units (shared or task-owned) and a classifier, as a :class:`TuneSpec` says."""

    def __init__(self, backbone: UniversalBackbone, num_classes: int, spec: TuneSpec) -> None:
        super().__init__()
        last = backbone.num_units - 1
        feature_unit = last if spec.feature_unit is None else spec.feature_unit
        if not 0 <= feature_unit <= last or any(not 0 <= u <= feature_unit for u in spec.units):
            raise ConfigError(f"units {list(spec.units)} / feature unit {feature_unit} do not fit a backbone "
                              f"of {backbone.num_units} units")
        self.spec = spec
        self.freeze_bn_stats = False  # attention phases train with the norms' statistics fixed
        self._backbone_params = tuple(backbone.parameters())  # held, so their ids stay theirs (accounting)
        source = [backbone.stem, *backbone.blocks][: feature_unit + 1]
        self.units = nn.ModuleList(self._unit(u, i in spec.units, spec.bn) for i, u in enumerate(source))
        if spec.attention:
            for unit in self.units:
                add_attention(unit, spec.attention)
        self.owns_head_norm = feature_unit == last and (last in spec.units or spec.bn == "affine")
        if feature_unit < last:
            self.head_norm: nn.Module = nn.Identity()
        else:
            self.head_norm = self._unit(backbone.head_norm, last in spec.units, spec.bn)
        with torch.no_grad():
            size = backbone.spec.input_size
            dim = self.features(torch.zeros(1, 3, size, size)).shape[1]
        self.classifier = nn.Linear(dim, num_classes)

    @staticmethod
    def _unit(unit: nn.Module, owned: bool, bn: str) -> nn.Module:
        if owned:
            clone = copy.deepcopy(unit)
            for p in clone.parameters():
                p.requires_grad_(True)
            return clone
        return share_frozen_own_norms(unit) if bn == "affine" else share_frozen(unit)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return pool(self.head_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def train(self, mode: bool = True) -> TunedNet:
        """Shared units keep the backbone's statistics (eval mode) unless the task owns its batch norms and
        :attr:`freeze_bn_stats` is off."""
        super().train(mode)
        if mode and (self.spec.bn == "frozen" or self.freeze_bn_stats):
            for i, unit in enumerate(self.units):
                if i not in self.spec.units:
                    unit.eval()
            if not self.owns_head_norm:
                self.head_norm.eval()
        return self

    def _owned_prefixes(self) -> list[str]:
        prefixes = [f"units.{i}." for i in self.spec.units] + ["classifier."]
        if self.owns_head_norm:
            prefixes.append("head_norm.")
        if self.spec.bn == "affine":
            for name, m in self.named_modules():
                if isinstance(m, nn.BatchNorm2d):
                    prefixes.append(f"{name}.")
        return prefixes

    def task_state(self) -> dict[str, torch.Tensor]:
        """Exactly what the task owns (owned units whole, owned batch norms with their attention scales and
        keep masks, filter attention scales, the classifier); never a backbone weight, pruned or not."""
        prefixes = tuple(self._owned_prefixes())
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if k.startswith(prefixes) or k.endswith(".attention")}

    def load_task_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`task_state` (pruning first where keep masks say so). Raises PackError on any
        mismatch."""
        for key in sorted(k for k in state if k.endswith(".keep")):
            path = key[: -len(".keep")]
            parent, _, norm = path.rpartition(".")
            try:
                block = self.get_submodule(parent)
            except AttributeError as e:
                raise PackError(f"task weights do not fit this network: unexpected {key}") from e
            prune_channels(block, norm, state[key])
        own = self.state_dict()
        needed = set(self.task_state())
        unexpected, missing = sorted(set(state) - needed), sorted(needed - set(state))
        if unexpected or missing:
            raise PackError("task weights do not fit this network: "
                            + (f"unexpected {', '.join(unexpected[:3])} " if unexpected else "")
                            + (f"missing {', '.join(missing[:3])}" if missing else ""))
        bad = [k for k, v in state.items() if own[k].shape != v.shape]
        if bad:
            raise PackError(f"task weights do not fit this network: wrong shape for {', '.join(bad[:3])}")
        self.load_state_dict(state, strict=False)

    def accounting(self, input_size: int) -> dict:
        """Task-owned and shared parameters used, and FLOPs (multiply-accumulates) of one image. Task-owned is
        every parameter that is not the backbone's own: with pruning, the task's smaller copies of the
        convolutions it cut count too (the pack stores only their keep masks)."""
        shared = {id(p) for p in self._backbone_params}
        task = sum(p.numel() for p in self.parameters() if id(p) not in shared)
        total = count_params(self)
        return {"task_params": int(task), "shared_params_used": int(total - task),
                "flops": count_flops(self, torch.zeros(1, 3, input_size, input_size)),
                "units_owned": list(self.spec.units), "units_used": len(self.units)}
