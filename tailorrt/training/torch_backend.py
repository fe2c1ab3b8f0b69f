"""The torch backend of :class:`tailorrt.Runtime` (PyTorch eager), registered as the entry point ``torch`` of
``tailorrt.backends``: the backbone is loaded once and every task's student shares its Parameter objects."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from tailorrt import kinds
from tailorrt.backends import current_export, export_entry, not_loaded, release_freed_memory
from tailorrt.errors import DependencyMissingError
from tailorrt.pack import ModelDir
from tailorrt.training.packs import TrainingDir


class TorchBackend:
    """PyTorch eager: the backbone is loaded once, students share its weights. At bf16 every call runs under
    ``torch.autocast``, for tasks whose bf16 accuracy ``tailor export --precision bf16`` checked."""

    name = "torch"
    max_batch = 256

    def __init__(self, mdir: ModelDir, device: str, threads: int | None = None, *, share_weights: bool = True,
                 precision: str = "fp32") -> None:
        """``threads`` and ``share_weights`` are the onnx backend's (every student shares the backbone here)."""
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DependencyMissingError("device cuda was asked for but PyTorch sees no CUDA GPU; use device cpu")
        self.device = torch.device(device)
        kind = kinds.for_precision(precision)
        # at a low precision, the export that checked each task's accuracy under autocast; at fp32 none is needed
        self.kind = kind if kind.backend == self.name else None
        self.manifest = current_export(mdir, kind.folder) if self.kind is not None else None
        self.autocast = getattr(torch, self.kind.autocast) if self.kind is not None and self.kind.autocast else None
        self.mdir = TrainingDir.of(mdir)
        self.backbone, rec = self.mdir.load_backbone()
        self.backbone_sha256 = rec.sha256
        self.backbone.to(self.device)
        self.models: dict = {}  # task -> torch module

    def add(self, *tasks: str) -> None:
        for task in tasks:
            if self.manifest is not None:
                export_entry(self.mdir, self.kind.folder, self.manifest, task)
            model, _ = self.mdir.load_model(task, self.backbone, self.backbone_sha256)
            self.models[task] = model.to(self.device).eval()
        release_freed_memory()

    def remove(self, task: str) -> None:
        self.models.pop(task, None)
        release_freed_memory()

    def logits(self, task: str, x: np.ndarray) -> np.ndarray:
        model = self.models.get(task)
        if model is None:
            raise not_loaded(task)
        autocast = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None else nullcontext()
        with torch.inference_mode(), autocast:
            return model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
