"""Pretraining a universal backbone on the built-in source task (reproduces the embedded weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tailorrt.files import write_json
from tailorrt.training.backbones import EMBEDDED, build_backbone, get_spec
from tailorrt.training.datasets import Preprocess, load_task
from tailorrt.training.io import save_tensors
from tailorrt.training.phases import PhaseConfig, Progress, Trainer, accuracy
from tailorrt.training.teacher import Teacher


@dataclass
class PretrainConfig:
    """Schedule for ``tailor pretrain`` (defaults reproduce the shipped embedded backbone)."""

    backbone: str = EMBEDDED
    task: str = "synth-source"
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 5e-4
    seed: int = 0


def pretrain(cfg: PretrainConfig, out: Path, *, device: torch.device, work_dir: Path | None = None,
             progress: Progress | None = None) -> dict:
    """Train ``cfg.backbone`` from scratch on ``cfg.task``; write ``out`` (.safetensors) and ``out``.json."""
    torch.manual_seed(cfg.seed)
    spec = get_spec(cfg.backbone)
    backbone, _ = build_backbone(cfg.backbone, pretrained=False)
    data = load_task(cfg.task, data_dir=Path("."), preprocess=Preprocess(spec.input_size, spec.mean, spec.std))
    model = Teacher(backbone, len(data.classes)).to(device)
    ce = nn.CrossEntropyLoss()

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return ce(logits, y), logits

    phase = PhaseConfig("pretrain", cfg.epochs, cfg.lr, cfg.weight_decay, batch_size=cfg.batch_size,
                        warmup_epochs=0.5)
    result = Trainer(device=device, work_dir=work_dir, progress=progress, seed=cfg.seed).run(
        phase, model, loss_fn, data.train, data.val)
    test_acc = accuracy(model, data.test, device)
    save_tensors(out, model.backbone.state_dict())
    report = {"config": asdict(cfg), "val_accuracy": result.val_accuracy, "test_accuracy": test_acc,
              "seconds": result.seconds, "history": result.history, "torch": torch.__version__}
    write_json(Path(out).with_suffix(".json"), report)
    return report
