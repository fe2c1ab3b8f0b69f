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

from tailorrt.records import TaskRecord
from tailorrt.training.methods.base import register
from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec
from tailorrt.training.methods.tuning_method import Runner, TuningMethod, phase


def select_unit(method: str, run: Runner) -> tuple[TunedNet, dict]:
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


class Flex(TuningMethod):
    family = "flex"
    names = ("flex", "fast-flex", "faster-flex")
    syntax = "flex, fast-flex, faster-flex"
    help = "fine-tune the one best unit of the backbone, chosen on validation accuracy (or every unit if that wins)"
    examples = ("fast-flex", "flex")
    candidates = ("fast-flex",)

    def fit(self, name: str, run: Runner) -> tuple[TunedNet, dict]:
        net, selection = select_unit(name, run)
        return net, {"selection": selection}

    def describe(self, record: TaskRecord) -> str:
        return f"unit {record.raw['selection']['chosen_unit']}"

    def training_seconds(self, record: TaskRecord) -> float:
        """The phases, plus the scoring steps that train nothing."""
        scoring = sum(s["seconds"] for s in record.raw["selection"]["steps"] if s["epochs"] == 0)
        return round(super().training_seconds(record) + scoring, 2)


register(Flex())
