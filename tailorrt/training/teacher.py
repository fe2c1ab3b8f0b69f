"""The teacher: the whole backbone plus a linear head, every weight trainable (plain fine-tuning)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tailorrt.training.backbones import UniversalBackbone


class Teacher(nn.Module):
    """A private, trainable copy of the backbone with a classifier; exposes per-unit activations."""

    def __init__(self, backbone: UniversalBackbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the output of every unit (stem first)."""
        units = self.backbone.forward_units(x)
        return self.classifier(self.backbone.features(units[-1])), units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]
