"""What the methods that tune parts of the backbone share (see
:class:`~tailorrt.training.methods.parts.tuned_net.TunedNet`): their schedules, a runner that builds and trains tuned
networks phase by phase, their metrics, and the :class:`TuningMethod` base that rebuilds, exports and draws any of
them from its pack.

The families: the classic baselines (:mod:`~tailorrt.training.methods.classic`), flex-tuning
(:mod:`~tailorrt.training.methods.flex`), channel attention (:mod:`~tailorrt.training.methods.channel_attention`) and
residual adapters (:mod:`~tailorrt.training.methods.adapters`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch.nn import functional as F

from tailorrt.records import TaskRecord
from tailorrt.training.backbones import UniversalBackbone
from tailorrt.training.datasets import TaskData
from tailorrt.training.methods.base import Method, MethodOption, Trained
from tailorrt.training.methods.parts import pictures
from tailorrt.training.methods.parts.channel_scales import AttentionConfig, Pruning
from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec
from tailorrt.training.onnx_graph import INPUT, GraphBuilder
from tailorrt.training.onnx_layers import emit_block, emit_head, emit_sequence
from tailorrt.training.phases import PhaseConfig, Trainer, accuracy


@dataclass(frozen=True)
class Step:
    """One step of a method's own schedule as its record keeps it (flex's selection, channel attention's
    schedule): a training step (its epochs and validation accuracy), a scoring that trains nothing (0 epochs), or
    channel attention's pruning (0 epochs, with what it cut)."""

    step: str
    seconds: float
    epochs: int
    val_accuracy: float | None = None
    pruning: Pruning | None = None  # kept flat in the record, beside the step's own fields

    def to_json(self) -> dict:
        out = {"step": self.step, "seconds": self.seconds, "epochs": self.epochs}
        if self.val_accuracy is not None:
            out["val_accuracy"] = self.val_accuracy
        return {**out, **(self.pruning.to_json() if self.pruning else {})}

    @classmethod
    def from_json(cls, data: dict) -> Step:
        return cls(data["step"], data["seconds"], data["epochs"], data.get("val_accuracy"),
                   Pruning.from_json(data) if "pruned_channels" in data else None)


@dataclass
class TransferConfig:
    """Schedules of the tuning methods. Defaults are for real data; :meth:`quick` fits the built-in tasks."""

    head: PhaseConfig = field(default_factory=lambda: PhaseConfig("head", 10, 0.1, batch_size=32))
    tune: PhaseConfig = field(default_factory=lambda: PhaseConfig("tune", 20, 0.01, batch_size=32, patience=4))
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    @classmethod
    def quick(cls) -> TransferConfig:
        return cls(head=PhaseConfig("head", 2, 0.1, batch_size=64),
                   tune=PhaseConfig("tune", 3, 0.02, batch_size=64, patience=2),
                   attention=AttentionConfig(schedule="FFAABA", penalty_weight=2e-3, attention_lr=0.2, bn_lr=0.02))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TransferConfig:
        attention = AttentionConfig(**data["attention"]) if "attention" in data else AttentionConfig()
        return cls(head=PhaseConfig(**data["head"]), tune=PhaseConfig(**data["tune"]), attention=attention)


def cross_entropy(net: TunedNet, extra: Callable[[], torch.Tensor] | None = None):
    """Cross-entropy, plus ``extra()`` (a penalty) when given."""
    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        return (loss + extra() if extra is not None else loss), logits

    return loss_fn


def phase(p: PhaseConfig, name: str, epochs: int | None = None) -> PhaseConfig:
    return replace(p, name=name, epochs=p.epochs if epochs is None else epochs)


class Runner:
    """Builds and trains tuned networks of one backbone on one task, recording each phase."""

    def __init__(self, backbone: UniversalBackbone, data: TaskData, trainer: Trainer, cfg: TransferConfig,
                 network: Callable[[UniversalBackbone, int, TuneSpec], TunedNet] = TunedNet) -> None:
        self.backbone, self.data, self.trainer, self.cfg, self.network = backbone, data, trainer, cfg, network
        self.phases: list[dict] = []

    def net(self, spec: TuneSpec, head_from: TunedNet | None = None) -> TunedNet:
        """The method's network for ``spec`` on the training device, its classifier copied from ``head_from``."""
        net = self.network(self.backbone, len(self.data.classes), spec).to(self.trainer.device)
        if head_from is not None:
            net.classifier.load_state_dict(head_from.classifier.state_dict())
        return net

    def train(self, net: TunedNet, phase: PhaseConfig, extra: Callable[[], torch.Tensor] | None = None,
              **run_kwargs) -> float:
        result = self.trainer.run(phase, net, cross_entropy(net, extra), self.data.train, self.data.val, **run_kwargs)
        self.phases.append(result.to_json())
        return result.val_accuracy

    def val(self, net: TunedNet) -> float:
        return accuracy(net, self.data.val, self.trainer.device)


def tuned_metrics(net: TunedNet, backbone: UniversalBackbone, data: TaskData, device: torch.device) -> dict:
    """Test accuracy, parameters, FLOPs and the universal blocks a tuned network keeps shared."""
    acc = accuracy(net, data.test, device)
    acct = net.accounting(backbone.spec.input_size)
    dense = TunedNet(backbone, len(data.classes), TuneSpec()).accounting(backbone.spec.input_size)
    blocks = [i for i in range(1, len(net.units)) if i not in net.spec.units]
    return {"accuracy": round(acc, 3), "teacher_accuracy": None, "teacher_flops": dense["flops"],
            "universal_blocks_kept": len(blocks), "universal_blocks_total": backbone.num_units - 1, **acct}


def emit_tuned(g: GraphBuilder, net: TunedNet) -> None:
    """A tuned network: its units in order (shared ones keep the backbone's weights), then the head."""
    net.eval()
    x, c = emit_sequence(g, list(net.units[0]), INPUT, 1.0)
    for block in net.units[1:]:
        x = emit_block(g, block, x, c, 1.0 / c)
        c = 1.0
    emit_head(g, net.head_norm, net.classifier, x, c)


HEAD_EPOCHS = MethodOption("head-epochs", int, "Epochs of the linear head phase.", "head.epochs")
TUNE_EPOCHS = MethodOption("tune-epochs", int, "Most epochs of each tuning phase (early stopping on validation "
                           "accuracy).", "tune.epochs")


class TuningMethod(Method):
    """A family whose tasks are :class:`TunedNet` s: ``task.json`` records the network's :class:`TuneSpec` as
    ``tune``; subclasses train (:meth:`fit`) and may say what training chose (:meth:`describe`)."""

    options = (HEAD_EPOCHS, TUNE_EPOCHS)

    def default_config(self, builtin: bool) -> TransferConfig:
        return TransferConfig.quick() if builtin else TransferConfig()

    def config_from_json(self, data: dict) -> TransferConfig:
        return TransferConfig.from_json(data)

    def spec(self, name: str, num_units: int) -> TuneSpec | None:
        """What a network of method ``name`` owns, where the name fixes it (None where training chooses)."""
        return None

    def fit(self, name: str, run: Runner) -> tuple[TunedNet, dict]:
        """Train and return the network and the method's own entries of ``task.json`` (besides ``tune``)."""
        raise NotImplementedError

    def train(self, name: str, cfg: TransferConfig, backbone: UniversalBackbone, data: TaskData,
              trainer: Trainer) -> Trained:
        self.check(name, backbone.num_units)
        run = Runner(backbone, data, trainer, cfg, self.network)
        net, record = self.fit(name, run)
        metrics = {**tuned_metrics(net, backbone, data, trainer.device), **record.pop("metrics", {})}
        return Trained(net, metrics, run.phases, {"tune": net.spec.to_json(), "config": cfg.to_json(), **record})

    def network(self, backbone: UniversalBackbone, classes: int, spec: TuneSpec) -> TunedNet:
        """The family's network for ``spec`` (training and loading build it the same way)."""
        return TunedNet(backbone, classes, spec)

    def build(self, backbone: UniversalBackbone, record: TaskRecord) -> TunedNet:
        return self.network(backbone, len(record.classes), TuneSpec.from_json(record.raw["tune"]))

    def emit(self, g: GraphBuilder, net: TunedNet) -> None:
        emit_tuned(g, net)

    def architecture_figure(self, plt, record: TaskRecord):
        return pictures.units_architecture(plt, record)
