"""The classic transfer baselines: what each owns is fixed by its name.

- ``linear[:U]``: nothing owned but the classifier, on the frozen features of the last unit (or unit U);
- ``finetune-last:K``: the last K units; ``finetune-all``: every unit (the per-task model users compare with);
- ``scale-shift``: the batch-norm affine weights and statistics of every unit, plus the classifier.

Each trains a linear head first, then (where it owns more) the owned parts, starting from that head.
"""

from __future__ import annotations

from tailorrt.errors import ConfigError
from tailorrt.training.backbones import UniversalBackbone
from tailorrt.training.methods.base import register
from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec
from tailorrt.training.methods.tuning_method import Runner, TuningMethod

REFERENCE = "finetune-all"  # the whole backbone fine-tuned: what tailor compare measures every method against


def parse(name: str, num_units: int) -> TuneSpec:
    """The :class:`TuneSpec` of a classic method name, or ConfigError."""
    base, _, arg = name.partition(":")
    last = num_units - 1

    def int_arg(low: int, high: int) -> int:
        if not arg.isdigit() or not low <= int(arg) <= high:
            raise ConfigError(f"method {name!r}: give a unit count or index between {low} and {high}, "
                              f"e.g. {base}:{min(high, max(low, 2))}")
        return int(arg)

    if base == "linear":
        return TuneSpec(feature_unit=int_arg(0, last) if arg else None)
    if base == "finetune-last":
        k = int_arg(1, num_units)
        return TuneSpec(units=tuple(range(num_units - k, num_units)))
    if arg:
        raise ConfigError(f"method {name!r}: {base} takes no options")
    if base == "finetune-all":
        return TuneSpec(units=tuple(range(num_units)))
    return TuneSpec(bn="affine")  # scale-shift


def reference_network(backbone: UniversalBackbone, classes: int) -> TunedNet:
    """The per-task model of :data:`REFERENCE`: a network that owns every unit of the backbone."""
    return TunedNet(backbone, classes, parse(REFERENCE, backbone.num_units))


class Classic(TuningMethod):
    family = "classic"
    names = ("linear", "finetune-last", "finetune-all", "scale-shift")
    syntax = "linear[:U], finetune-last:K, finetune-all, scale-shift"
    help = ("the classic baselines: a linear classifier on frozen features (of unit U), the last K units or every "
            "unit fine-tuned, or the batch norms' scale and shift")
    examples = ("linear", "scale-shift", "finetune-last:1")
    candidates = ("linear", "scale-shift")
    takes_options = True

    def check(self, name: str, num_units: int) -> None:
        parse(name, num_units)

    def spec(self, name: str, num_units: int) -> TuneSpec:
        return parse(name, num_units)

    def fit(self, name: str, run: Runner) -> tuple[TunedNet, dict]:
        spec = parse(name, run.backbone.num_units)
        net = run.net(TuneSpec(feature_unit=spec.feature_unit))  # a linear head first
        run.train(net, run.cfg.head)
        if spec.units or spec.bn == "affine":  # then the owned parts, starting from that head
            net = run.net(spec, head_from=net)
            run.train(net, run.cfg.tune)
        return net, {}


register(Classic())
