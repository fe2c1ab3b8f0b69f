"""Training the methods that tune parts of the backbone: the classic baselines and flex-tuning.

- ``linear[:U]``, ``finetune-last:K``, ``finetune-all``, ``scale-shift``: one phase on what the
  :class:`~tailorrt.tuned.TuneSpec` leaves trainable.
- ``flex``: fine-tune every single unit (each with early stopping on validation accuracy) and every
  unit at once; keep the best on validation.
- ``fast-flex``: fine-tune every unit at once, score each unit by grafting its fine-tuned weights
  into the frozen network (validation accuracy, no training), then fine-tune the best unit alone;
  keep it, or the all-units model if that is better on validation.
- ``faster-flex``: the same with a single epoch of all-unit fine-tuning (its all-units model is not
  a candidate).
- ``attention[:...]``: scales on every convolution (:mod:`tailorrt.attention`), trained on a schedule of
  head (F), attention (A, statistics fixed, with the penalty) and batch-norm (B, statistics re-estimated)
  epochs; ``:prune`` removes the channels whose scale fell below the threshold (P) and recovers (B).

The chosen unit, every candidate's score and the cost of each step go into the result (the attention
schedule, its scales per epoch and what pruning removed, for attention).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch.nn import functional as F

from tailorrt.attention import (AttentionConfig, AttentionMethod, attention_parameters, attention_summary, penalty,
                                prune_by_scale)
from tailorrt.backbones import UniversalBackbone
from tailorrt.datasets import TaskData
from tailorrt.errors import ConfigError
from tailorrt.training import PhaseConfig, Trainer, accuracy
from tailorrt.tuned import TunedNet, TuneSpec, parse_method

FLEX_METHODS = ("flex", "fast-flex", "faster-flex")
METHOD_HELP = ("nettailor, flex, fast-flex, faster-flex, linear, linear:U, finetune-last:K, finetune-all, "
               "scale-shift, attention[:channel|filter][:l1|l2|distance-to-1][:prune]")


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


@dataclass
class TunedTask:
    """What a tuning method hands to the pack writer."""

    net: TunedNet
    metrics: dict
    phases: list[dict]
    selection: dict | None = None  # flex: the chosen unit, every candidate's score, the cost of each step
    attention: dict | None = None  # attention: its options, the schedule's steps, what pruning removed


def check_method(method: str, num_units: int) -> None:
    """Raise ConfigError unless ``method`` is nettailor, a flex method or a classic method for ``num_units``."""
    if method != "nettailor" and method not in FLEX_METHODS and parse_method(method, num_units) is None:
        raise ConfigError(f"unknown method {method!r}; choose one of {METHOD_HELP}")


def _ce(net: TunedNet, extra: Callable[[], torch.Tensor] | None = None):
    """Cross-entropy, plus ``extra()`` (a penalty) when given."""
    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        return (loss + extra() if extra is not None else loss), logits

    return loss_fn


def _phase(p: PhaseConfig, name: str, epochs: int | None = None) -> PhaseConfig:
    return replace(p, name=name, epochs=p.epochs if epochs is None else epochs)


class _Runner:
    """Builds and trains tuned networks of one backbone on one task, recording each phase."""

    def __init__(self, backbone: UniversalBackbone, data: TaskData, trainer: Trainer, cfg: TransferConfig) -> None:
        self.backbone, self.data, self.trainer, self.cfg = backbone, data, trainer, cfg
        self.phases: list[dict] = []

    def net(self, spec: TuneSpec, head_from: TunedNet | None = None) -> TunedNet:
        net = TunedNet(self.backbone, len(self.data.classes), spec).to(self.trainer.device)
        if head_from is not None:
            net.classifier.load_state_dict(head_from.classifier.state_dict())
        return net

    def train(self, net: TunedNet, phase: PhaseConfig, extra: Callable[[], torch.Tensor] | None = None,
              **run_kwargs) -> float:
        result = self.trainer.run(phase, net, _ce(net, extra), self.data.train, self.data.val, **run_kwargs)
        self.phases.append(result.to_json())
        return result.val_accuracy

    def val(self, net: TunedNet) -> float:
        return accuracy(net, self.data.val, self.trainer.device)


def train_transfer(method: str, cfg: TransferConfig, backbone: UniversalBackbone, data: TaskData,
                   trainer: Trainer) -> TunedTask:
    """Train ``method`` (see the module docstring) and return the task's network with its metrics."""
    check_method(method, backbone.num_units)
    run = _Runner(backbone, data, trainer, cfg)
    spec = parse_method(method, backbone.num_units)
    selection = attention = None
    if spec is not None and spec.attention:
        net, attention = _attention(method, run)
    elif spec is not None:
        net = run.net(TuneSpec(feature_unit=spec.feature_unit))  # a linear head first
        run.train(net, cfg.head)
        if spec.units or spec.bn == "affine":  # then the owned parts, starting from that head
            net = run.net(spec, head_from=net)
            run.train(net, cfg.tune)
    else:
        net, selection = _flex(method, run)
    acc = accuracy(net, data.test, trainer.device)
    acct = net.accounting(backbone.spec.input_size)
    dense = TunedNet(backbone, len(data.classes), TuneSpec()).accounting(backbone.spec.input_size)
    blocks = [i for i in range(1, len(net.units)) if i not in net.spec.units]
    metrics = {"accuracy": round(acc, 3), "teacher_accuracy": None, "teacher_flops": dense["flops"],
               "universal_blocks_kept": len(blocks), "universal_blocks_total": backbone.num_units - 1, **acct}
    if attention is not None:
        metrics["pruned_channels"] = attention["pruning"]["pruned_channels"] if attention["pruning"] else 0
    return TunedTask(net, metrics, run.phases, selection, attention)


def _flex(method: str, run: _Runner) -> tuple[TunedNet, dict]:
    """Choose one unit to fine-tune (or all of them, where the method allows it) on validation accuracy."""
    units = list(range(run.backbone.num_units))
    cfg = run.cfg
    steps: list[dict] = []

    def step(name: str, t0: float, *, trained: bool = True, **extra) -> None:
        epochs = run.phases[-1]["epochs"] if trained else 0
        steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 2), "epochs": epochs, **extra})

    t0 = time.perf_counter()
    probe = run.net(TuneSpec())
    run.train(probe, cfg.head)
    step("head", t0)
    t0 = time.perf_counter()
    all_units = run.net(TuneSpec(units=tuple(units)), head_from=probe)
    epochs = 1 if method == "faster-flex" else None
    all_val = run.train(all_units, _phase(cfg.tune, "all-units", epochs))
    step("all-units", t0, val_accuracy=all_val)
    scores: dict[int, float] = {}
    nets: dict[int, TunedNet] = {}
    if method == "flex":  # exhaustive: fine-tune each unit alone
        for u in units:
            t0 = time.perf_counter()
            nets[u] = run.net(TuneSpec(units=(u,)), head_from=probe)
            scores[u] = run.train(nets[u], _phase(cfg.tune, f"unit-{u}"))
            step(f"unit-{u}", t0, val_accuracy=scores[u])
    else:  # graft each fine-tuned unit into the frozen network and score it without training
        t0 = time.perf_counter()
        for u in units:
            graft = run.net(TuneSpec(units=(u,)), head_from=all_units)
            graft.units[u].load_state_dict(all_units.units[u].state_dict())
            if u == units[-1] and graft.owns_head_norm:
                graft.head_norm.load_state_dict(all_units.head_norm.state_dict())
            scores[u] = run.val(graft)
        step("graft-scores", t0, trained=False)
        best = max(scores, key=scores.get)
        t0 = time.perf_counter()
        nets[best] = run.net(TuneSpec(units=(best,)), head_from=all_units)
        tuned_val = run.train(nets[best], _phase(cfg.tune, f"unit-{best}"))
        step(f"unit-{best}", t0, val_accuracy=tuned_val)
    best = max(scores, key=scores.get)
    best_val = scores[best] if method == "flex" else steps[-1]["val_accuracy"]
    chosen, net = best, nets[best]
    if method != "faster-flex" and all_val > best_val:  # the method may return the all-units model
        chosen, net = "all", all_units
    selection = {"method": method, "chosen_unit": chosen,
                 "candidate_scores": {str(u): v for u, v in scores.items()},
                 "score": "val accuracy after fine-tuning" if method == "flex" else
                 "val accuracy with the unit grafted from the all-units fine-tune",
                 "all_units_val_accuracy": all_val, "chosen_val_accuracy": all_val if chosen == "all" else best_val,
                 "steps": steps, "epochs": sum(x["epochs"] for x in steps),
                 "seconds": round(sum(x["seconds"] for x in steps), 2)}
    return net, selection


def _set_trainable(net: TunedNet, letter: str) -> None:
    """F: the classifier; A: the attention scales and the classifier, statistics fixed; B: the batch norms'
    affine weights (statistics re-estimated) and the classifier."""
    scales = {id(p) for p in attention_parameters(net)}
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("classifier.") or (letter == "A" and id(p) in scales))
    if letter == "B":
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.affine:
                m.weight.requires_grad_(True)
                m.bias.requires_grad_(True)
    net.freeze_bn_stats = letter != "B"


def _attention(method: str, run: _Runner) -> tuple[TunedNet, dict]:
    """Train channel (or filter) attention on the schedule of ``run.cfg.attention``; prune where asked."""
    opts = AttentionMethod.parse(method)
    acfg = run.cfg.attention
    net = run.net(parse_method(method, run.backbone.num_units))
    steps: list[dict] = []
    pruning = None
    for i, (letter, epochs) in enumerate(acfg.steps(opts.prune), start=1):
        t0 = time.perf_counter()
        if letter == "P":
            before = run.val(net)
            pruning = prune_by_scale(net.units, acfg.prune_below)
            pruning.update(val_accuracy_before=before, val_accuracy_after=run.val(net))
            steps.append({"step": f"{i}-P", "seconds": round(time.perf_counter() - t0, 2), "epochs": 0, **pruning})
            continue
        _set_trainable(net, letter)
        base = run.cfg.head if letter == "F" else replace(run.cfg.tune, lr=acfg.attention_lr if letter == "A"
                                                          else acfg.bn_lr, patience=None)
        scales = attention_parameters(net)
        extra = ((lambda: acfg.penalty_weight * penalty(scales, opts.penalty))
                 if letter == "A" and acfg.penalty_weight else None)
        val = run.train(net, replace(base, name=f"attention-{i}-{letter}", epochs=epochs), extra,
                        special=scales if letter == "A" else None,
                        on_epoch=lambda _e: {"attention": attention_summary(net.units, acfg.prune_below)})
        steps.append({"step": f"{i}-{letter}", "seconds": round(time.perf_counter() - t0, 2), "epochs": epochs,
                      "val_accuracy": val})
    for p in net.parameters():
        p.requires_grad_(False)
    net.freeze_bn_stats = False
    record = {"method": method, "granularity": opts.granularity, "penalty": opts.penalty, **acfg.to_json(),
              "steps": steps, "pruning": pruning, "scales": attention_summary(net.units, acfg.prune_below),
              "epochs": sum(s["epochs"] for s in steps), "seconds": round(sum(s["seconds"] for s in steps), 2)}
    return net, record
