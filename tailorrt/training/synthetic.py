"""Untrained model directories for measuring memory and speed at full size (no training, no dataset).

``make_model_dir(root, backbone="resnet34", tasks=3)`` writes a randomly initialised (or pretrained) backbone and
``tasks`` NetTailor packs with random attention, random BN statistics and a different pruning
each (every second universal block dropped in turn, weak proxies dropped), plus a tiny image folder
for the export's parity check. Accuracy is meaningless; sizes, graphs and timings are real.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tailorrt.records import Metrics, TaskDraft
from tailorrt.training.backbones import BackboneSource, UniversalBackbone, build_backbone, get_spec
from tailorrt.training.datasets import Preprocess
from tailorrt.training.methods.nettailor import NAME, NetTailorConfig
from tailorrt.training.methods.parts.student import LayerBlocks, Student
from tailorrt.training.packs import TrainingDir, machine, versions


def _image_folder(root: Path, classes: int, per_class: int = 4, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@torch.no_grad()
def make_student(backbone: UniversalBackbone, classes: int, seed: int, own_norms: bool = True) -> Student:
    """A pruned student with random attention and BN statistics (its own copies of the universal blocks' norms too,
    as real data's default has them). Seed 0 keeps every universal block (a hard task); others drop every second
    one, odd or even by seed."""
    gen = torch.Generator().manual_seed(seed)
    student = Student(backbone, classes, own_norms=own_norms).eval()
    for m in student.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    for l, layer in enumerate(student.layers):
        layer.alpha_params.copy_(torch.randn(len(layer.alpha_params), generator=gen))
        layer.alpha_params[0] += 2.0
        if seed and l % 2 == seed % 2 and 0 < l < len(student.layers) - 1:
            layer.keep[0] = False
    student.prune(universal_drop=0, proxy_threshold=0.15)
    student.compact()
    return student


def make_model_dir(root: str | Path, *, backbone: str = "resnet34", tasks: int = 3, classes: int = 10,
                   seed: int = 0, input_size: int | None = None, pretrained: bool = False) -> TrainingDir:
    """Write a random ``backbone`` (or its pretrained weights, as ``tailor train`` finds them) and ``tasks``
    synthetic task packs named ``synthetic-<i>``, whose images are resized to ``input_size`` (default: the
    backbone's own)."""
    root = Path(root)
    mdir = TrainingDir(root)
    torch.manual_seed(seed)
    if pretrained:
        model, source = build_backbone(backbone)
    else:
        model, source = UniversalBackbone(get_spec(backbone)), BackboneSource("random", "tailorrt.training.synthetic")
    sha = mdir.write_backbone(model.eval(), source)
    spec = model.spec
    pre = Preprocess(input_size or spec.input_size, spec.mean, spec.std)
    folder = _image_folder(root.parent / f"{root.name}-images", classes)
    cfg = NetTailorConfig()
    for i in range(tasks):
        student = make_student(model, classes, seed + i, own_norms=cfg.universal_norms)
        acc = student.accounting()
        metrics = Metrics.from_json({"accuracy": 0.0, "teacher_accuracy": 0.0,
                                     "teacher_flops": student.total_flops_dense(), **acc})
        draft = TaskDraft(NAME, sha, tuple(f"class{c:03d}" for c in range(classes)), pre, f"imagefolder:{folder}",
                          metrics, None,
                          {"backbone": spec.name, "architecture": LayerBlocks.to_json(student.architecture()),
                           "config": cfg.to_json(),
                           "data": {"name": "synthetic"}, "training": {"phases": [], "seconds": 0.0, "synthetic": True},
                           "versions": versions(), "machine": machine(),
                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        mdir.write_task(f"synthetic-{i}", student.task_state(), draft)
    return mdir
