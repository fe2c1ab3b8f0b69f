"""Flex-tuning: fine-tune the one unit of the backbone that helps the task most (or every unit, when that wins).

- ``flex``: fine-tune every single unit (each with early stopping on validation accuracy) and every
  unit at once; keep the best on validation.
- ``fast-flex``: fine-tune every unit at once, score each unit by grafting its fine-tuned weights
  into the frozen network (validation accuracy, no training), then fine-tune the best unit alone;
  keep it, or the all-units model if that is better on validation.
- ``faster-flex``: the same with a single epoch of all-unit fine-tuning (its all-units model is not
  a candidate).

The chosen unit, every candidate's score and the cost of each step go into ``task.json`` as ``selection``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from tailorrt.records import TaskRecord
from tailorrt.training.methods.base import register
from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec
from tailorrt.training.methods.tuning_method import Runner, Step, TuningMethod, phase


@dataclass(frozen=True)
class FlexSelection:
    """``selection`` of a flex task's record: the unit chosen (or "all"), every unit's score and each step's cost."""

    method: str
    chosen_unit: int | str  # a unit, or "all"
    candidate_scores: dict[int, float]
    score: str  # what a unit's score is
    all_units_val_accuracy: float
    chosen_val_accuracy: float
    steps: tuple[Step, ...]

    @property
    def scoring_seconds(self) -> float:
        """Seconds of the steps that trained nothing (grafting and scoring)."""
        return sum(s.seconds for s in self.steps if s.epochs == 0)

    def to_json(self) -> dict:
        return {**asdict(self), "candidate_scores": {str(u): v for u, v in self.candidate_scores.items()},
                "steps": [s.to_json() for s in self.steps], "epochs": sum(s.epochs for s in self.steps),
                "seconds": round(sum(s.seconds for s in self.steps), 2)}

    @classmethod
    def from_json(cls, data: dict) -> FlexSelection:
        return cls(data["method"], data["chosen_unit"], {int(u): v for u, v in data["candidate_scores"].items()},
                   data["score"], data["all_units_val_accuracy"], data["chosen_val_accuracy"],
                   tuple(Step.from_json(s) for s in data["steps"]))


def select_unit(method: str, run: Runner) -> tuple[TunedNet, FlexSelection]:
    """Choose one unit to fine-tune (or all of them, where the method allows it) on validation accuracy."""
    units = list(range(run.backbone.num_units))
    cfg = run.cfg
    steps: list[Step] = []

    def step(name: str, t0: float, *, trained: bool = True, val_accuracy: float | None = None) -> None:
        epochs = run.phases[-1]["epochs"] if trained else 0
        steps.append(Step(name, round(time.perf_counter() - t0, 2), epochs, val_accuracy))

    t0 = time.perf_counter()
    probe = run.net(TuneSpec())
    run.train(probe, cfg.head)
    step("head", t0)
    t0 = time.perf_counter()
    all_units = run.net(TuneSpec(units=tuple(units)), head_from=probe)
    epochs = 1 if method == "faster-flex" else None
    all_val = run.train(all_units, phase(cfg.tune, "all-units", epochs))
    step("all-units", t0, val_accuracy=all_val)
    scores: dict[int, float] = {}
    nets: dict[int, TunedNet] = {}
    if method == "flex":  # exhaustive: fine-tune each unit alone
        for u in units:
            t0 = time.perf_counter()
            nets[u] = run.net(TuneSpec(units=(u,)), head_from=probe)
            scores[u] = run.train(nets[u], phase(cfg.tune, f"unit-{u}"))
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
        tuned_val = run.train(nets[best], phase(cfg.tune, f"unit-{best}"))
        step(f"unit-{best}", t0, val_accuracy=tuned_val)
    best = max(scores, key=scores.get)
    best_val = scores[best] if method == "flex" else steps[-1].val_accuracy
    chosen, net = best, nets[best]
    if method != "faster-flex" and all_val > best_val:  # the method may return the all-units model
        chosen, net = "all", all_units
    score = ("val accuracy after fine-tuning" if method == "flex" else
             "val accuracy with the unit grafted from the all-units fine-tune")
    return net, FlexSelection(method, chosen, scores, score, all_val, all_val if chosen == "all" else best_val,
                              tuple(steps))


class Flex(TuningMethod):
    family = "flex"
    names = ("flex", "fast-flex", "faster-flex")
    syntax = "flex, fast-flex, faster-flex"
    help = "fine-tune the one best unit of the backbone, chosen on validation accuracy (or every unit if that wins)"
    examples = ("fast-flex", "flex")
    candidates = ("fast-flex",)

    def fit(self, name: str, run: Runner) -> tuple[TunedNet, dict]:
        net, selection = select_unit(name, run)
        return net, {"selection": selection.to_json()}

    def describe(self, record: TaskRecord) -> str:
        return f"unit {_selection(record).chosen_unit}"

    def training_seconds(self, record: TaskRecord) -> float:
        """The phases, plus the scoring steps that train nothing."""
        return round(super().training_seconds(record) + _selection(record).scoring_seconds, 2)


def _selection(record: TaskRecord) -> FlexSelection:
    """The flex method's own field of its task's record, parsed once."""
    return FlexSelection.from_json(record.raw["selection"])


register(Flex())
