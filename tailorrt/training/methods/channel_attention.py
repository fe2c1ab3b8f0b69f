"""Channel attention as a method: trainable scales on every convolution
(:mod:`tailorrt.training.methods.parts.channel_scales`), trained on a schedule of head (F), attention (A, statistics
fixed, with the penalty) and batch-norm (B, statistics re-estimated) epochs; ``:prune`` removes the channels whose
scale fell below the threshold (P) and recovers (B).

Names: ``attention[:channel|filter][:l1|l2|distance-to-1][:prune]``. The schedule's steps, the scales per
epoch and what pruning removed go into ``task.json`` as ``attention``.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from tailorrt.records import TaskRecord
from tailorrt.training.methods.base import MethodOption, register
from tailorrt.training.methods.parts import pictures
from tailorrt.training.methods.parts.channel_scales import (
    AttentionMethod,
    attention_parameters,
    attention_summary,
    penalty,
    prune_by_scale,
)
from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec
from tailorrt.training.methods.tuning_method import HEAD_EPOCHS, TUNE_EPOCHS, Runner, TuningMethod


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


def train_attention(method: str, run: Runner) -> tuple[TunedNet, dict]:
    """Train channel (or filter) attention on the schedule of ``run.cfg.attention``; prune where asked."""
    opts = AttentionMethod.parse(method)
    acfg = run.cfg.attention
    net = run.net(TuneSpec(bn="affine", attention=opts.granularity))
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
        set_trainable(net, letter)
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
        pruned = record["pruning"]["pruned_channels"] if record["pruning"] else 0
        return net, {"attention": record, "metrics": {"pruned_channels": pruned}}

    def describe(self, record: TaskRecord) -> str:
        p = (record.raw.get("attention") or {}).get("pruning")
        return f"{p['pruned_channels']}/{p['prunable_channels']} channels cut" if p else ""

    def architecture_figure(self, plt, record: TaskRecord):
        return pictures.units_architecture(plt, record, pictures.unit_scales(record))

    def attention_figure(self, plt, record: TaskRecord):
        history = pictures.attention_history(record)
        return None if history is None else pictures.scale_figure(plt, *history)


register(ChannelAttention())
