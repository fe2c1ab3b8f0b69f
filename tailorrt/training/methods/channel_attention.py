"""Channel attention as a method: trainable scales on every convolution
(:mod:`tailorrt.training.methods.parts.channel_scales`), trained on a schedule of head (F), attention (A, statistics
fixed, with the penalty) and batch-norm (B, statistics re-estimated) epochs; ``:prune`` removes the channels whose
scale fell below the threshold (P) and recovers (B).

Names: ``attention[:channel|filter][:l1|l2|distance-to-1][:prune]``. The schedule's steps, the scales per
epoch and what pruning removed go into ``task.json`` as ``attention``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace

import torch

from tailorrt.records import TaskRecord
from tailorrt.training.methods.base import MethodOption, register
from tailorrt.training.methods.parts import pictures
from tailorrt.training.methods.parts.channel_scales import (
    AttentionConfig,
    AttentionMethod,
    Pruning,
    UnitScales,
    attention_parameters,
    attention_summary,
    penalty,
    prune_by_scale,
)
from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec
from tailorrt.training.methods.tuning_method import HEAD_EPOCHS, TUNE_EPOCHS, Runner, Step, TuningMethod


def set_trainable(net: TunedNet, letter: str) -> None:
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


@dataclass(frozen=True)
class AttentionRecord:
    """``attention`` of a channel-attention task's record: the variant, its schedule as run (:class:`Step` each),
    what pruning cut, and the final scales per unit."""

    method: str
    granularity: str
    penalty: str
    config: AttentionConfig
    steps: tuple[Step, ...]
    pruning: Pruning | None  # None: the variant does not prune
    scales: tuple[UnitScales, ...]

    def to_json(self) -> dict:
        return {"method": self.method, "granularity": self.granularity, "penalty": self.penalty,
                **self.config.to_json(), "steps": [s.to_json() for s in self.steps],
                "pruning": self.pruning.to_json() if self.pruning else None,
                "scales": [asdict(u) for u in self.scales], "epochs": sum(s.epochs for s in self.steps),
                "seconds": round(sum(s.seconds for s in self.steps), 2)}

    @classmethod
    def from_json(cls, data: dict) -> AttentionRecord:
        config = AttentionConfig(**{f.name: data[f.name] for f in fields(AttentionConfig) if f.name in data})
        return cls(data["method"], data["granularity"], data["penalty"], config,
                   tuple(Step.from_json(s) for s in data["steps"]),
                   Pruning.from_json(data["pruning"]) if data.get("pruning") else None,
                   tuple(UnitScales(**u) for u in data.get("scales") or []))


def train_attention(method: str, run: Runner) -> tuple[TunedNet, AttentionRecord]:
    """Train channel (or filter) attention on the schedule of ``run.cfg.attention``; prune where asked."""
    opts = AttentionMethod.parse(method)
    acfg = run.cfg.attention
    net = run.net(TuneSpec(bn="affine", attention=opts.granularity))
    steps: list[Step] = []
    pruning = None
    for i, (letter, epochs) in enumerate(acfg.steps(opts.prune), start=1):
        t0 = time.perf_counter()
        if letter == "P":
            before = run.val(net)
            cut = prune_by_scale(net.units, acfg.prune_below)
            pruning = replace(cut, val_accuracy_before=before, val_accuracy_after=run.val(net))
            steps.append(Step(f"{i}-P", round(time.perf_counter() - t0, 2), 0, pruning=pruning))
            continue
        set_trainable(net, letter)
        base = run.cfg.head if letter == "F" else replace(run.cfg.tune, lr=acfg.attention_lr if letter == "A"
                                                          else acfg.bn_lr, patience=None)
        scales = attention_parameters(net)
        extra = ((lambda: acfg.penalty_weight * penalty(scales, opts.penalty))
                 if letter == "A" and acfg.penalty_weight else None)
        val = run.train(net, replace(base, name=f"attention-{i}-{letter}", epochs=epochs), extra,
                        special=scales if letter == "A" else None,
                        on_epoch=lambda _e: {"attention": [asdict(u) for u in attention_summary(net.units,
                                                                                                 acfg.prune_below)]})
        steps.append(Step(f"{i}-{letter}", round(time.perf_counter() - t0, 2), epochs, val))
    for p in net.parameters():
        p.requires_grad_(False)
    net.freeze_bn_stats = False
    return net, AttentionRecord(method, opts.granularity, opts.penalty, acfg, tuple(steps), pruning,
                                tuple(attention_summary(net.units, acfg.prune_below)))


class ChannelAttention(TuningMethod):
    family = "attention"
    names = ("attention",)
    syntax = "attention[:channel|filter][:l1|l2|distance-to-1][:prune]"
    help = ("a trainable scale on every convolution's channels (or filters) with the task's own batch norms; "
            ":prune removes the channels it switched off")
    examples = ("attention:prune",)
    blocks = ("basic", "bottleneck", "decathlon")
    why_not = {"mbconv": "its filter scales wrap full convolutions and its pruning removes a channel between two "
                         "of a block's full convolutions, where an MBConv block's expanded channels pass through a "
                         "depthwise one (scale-shift trains the same batch norms without the scales)"}
    candidates = ("attention",)
    takes_options = True
    options = (HEAD_EPOCHS, TUNE_EPOCHS,
               MethodOption("attention-schedule", str, "One letter per epoch: F head, A attention, B batch norms, "
                            "P prune (FFAAABAAABAA).", "attention.schedule"),
               MethodOption("penalty-weight", float, "Lambda of the scale penalty (1e-3).", "attention.penalty_weight"),
               MethodOption("prune-below", float, "With :prune, remove channels whose |scale| is below this (0.05).",
                            "attention.prune_below"))

    def check(self, name: str, num_units: int) -> None:
        AttentionMethod.parse(name)

    def spec(self, name: str, num_units: int) -> TuneSpec:
        return TuneSpec(bn="affine", attention=AttentionMethod.parse(name).granularity)

    def fit(self, name: str, run: Runner) -> tuple[TunedNet, dict]:
        net, record = train_attention(name, run)
        pruned = record.pruning.pruned_channels if record.pruning else 0
        return net, {"attention": record.to_json(), "metrics": {"pruned_channels": pruned}}

    def describe(self, record: TaskRecord) -> str:
        p = _attention(record).pruning
        return f"{p.pruned_channels}/{p.prunable_channels} channels cut" if p else ""

    def architecture_figure(self, plt, record: TaskRecord):
        return pictures.units_architecture(plt, record, pictures.unit_scales(_attention(record).scales))

    def attention_figure(self, plt, record: TaskRecord):
        history = pictures.attention_history(record)
        return None if history is None else pictures.scale_figure(plt, *history)


def _attention(record: TaskRecord) -> AttentionRecord:
    """The channel attention method's own field of its task's record, parsed once."""
    return AttentionRecord.from_json(record.raw["attention"])


register(ChannelAttention())
