"""NetTailor as a method: teacher fine-tuning, student with block attention, distillation and the
expected-complexity regulariser, pruning, and fine-tuning of what is left; and its ONNX graph.

For a NetTailor student, layer ``l`` computes ``u_l = relu(sum_i alpha_i B_i(...))``. Each kept
block is emitted with its output multiplied by ``alpha_i / c_l`` folded into its last batch norm
(private to the task), so the layer is a plain ``Add`` + ``Relu`` and the graph holds no ``Mul``.
Blocks whose shortcut carries the input unchanged (identity, or average-pool + zero-pad) cannot
absorb a scale; for them the layer's output scale ``c_l`` is chosen as ``alpha_0 * c_{l-1}`` so the
shortcut needs no multiply either. The head folds the last scale (and the head norm, if any) into
the task's classifier. Pruned blocks and blocks with a zero alpha are simply not emitted."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from tailorrt.errors import ConfigError, ExportError
from tailorrt.files import read_json, write_json
from tailorrt.records import TaskRecord
from tailorrt.training import augment
from tailorrt.training.backbones import UniversalBackbone
from tailorrt.training.datasets import TaskData
from tailorrt.training.methods.base import Method, MethodOption, Trained, register
from tailorrt.training.methods.parts import pictures
from tailorrt.training.methods.parts.selection import (
    Candidate,
    Plan,
    SearchRecord,
    Selection,
    Verdict,
    choose,
    eligible,
    search,
)
from tailorrt.training.methods.parts.student import LayerBlocks, Student
from tailorrt.training.onnx_graph import INPUT, GraphBuilder, check_positive
from tailorrt.training.onnx_layers import emit_block, emit_head, emit_sequence, passes_input
from tailorrt.training.paired import Paired
from tailorrt.training.phases import (
    JOINT,
    PhaseConfig,
    PhaseResult,
    Trainer,
    accuracy,
    correct,
    make_loader,
    percent,
    to_device,
)
from tailorrt.training.teacher import Teacher


@dataclass
class NetTailorConfig:
    """NetTailor hyper-parameters. Defaults follow the paper and its reference code; :meth:`quick` fits the
    built-in tasks."""

    max_skip: int = 3
    teacher_coeff: float = 10.0
    complexity_coeff: float = 0.3
    distill_logit_weight: float = 1.0  # the distillation's logit term against its mean layer term (reference: 1/L)
    local_distill: bool = True  # each layer's distance to the teacher computed from detached inputs (reference)
    # each layer's squared distance to the teacher as it is (mse, the reference), or over the teacher's mean square
    # of that layer (relative); auto: relative where the backbone's block outputs are linear (MBConv), whose scale
    # is the backbone's own (EfficientNet-Lite0's are 7-84 in mean square where a ResNet's, after BN and ReLU, are
    # 0.2-0.6: the distillation took the whole loss and the student did not learn; the README's Backbones)
    layer_distance: str = "auto"
    proxy_threshold: float = 0.05
    proxy_relative: float = 0.0  # also prune proxies below this fraction of their layer's strongest proxy
    universal_drop: int | None = None  # the fixed rule: drop the N lowest-alpha universal blocks; None: search
    tolerance: float = 0.5  # the search keeps the leanest candidate within this many points of the teacher (val)
    alpha_lr_mult: float = 1.0  # learning-rate multiplier of the block-attention logits (no weight decay)
    alpha_grad_clip: float | str | None = JOINT  # the logits' own gradient-norm clip (None: none), or JOINT
    # the task owns and trains the universal blocks' BN scale and shift (real data's default: it closed most of the
    # student's gap to its teacher on a small hard task; the README's On real data)
    universal_norms: bool = True
    augment: str = "crop"  # training batches of every phase: none, crop or crop-flip (tailorrt.training.augment)
    teacher: PhaseConfig = field(default_factory=lambda: PhaseConfig("teacher", 30, 0.01, batch_size=32))
    # at least 11,200 student steps (60 epochs of 6,000 images at batch 32): on fewer images the student gets more
    # epochs; on a small hard task they closed a third of its gap to the teacher, on 6,000 images the gap left by
    # the owned norms went from -0.52 to -0.19 on test (the README's On real data)
    student: PhaseConfig = field(default_factory=lambda: PhaseConfig("student", 30, 0.1, batch_size=32,
                                                                     min_steps=11200))
    # each candidate's fine-tune likewise gets at least 15 epochs of 6,000 images: at 2,000 images the 945 steps of
    # 15 epochs left a pruned candidate a point under its student on test (the README's On real data)
    finetune: PhaseConfig = field(default_factory=lambda: PhaseConfig("finetune", 15, 0.01, batch_size=32,
                                                                      min_steps=2800))

    def __post_init__(self) -> None:
        if self.max_skip < 1:
            raise ConfigError("max_skip must be at least 1")
        if not 0 <= self.proxy_threshold < 1:
            raise ConfigError("proxy_threshold must be in [0, 1)")
        if not 0 <= self.proxy_relative <= 1:
            raise ConfigError("--proxy-relative must be in [0, 1]")
        augment.check(self.augment)
        if self.layer_distance not in LAYER_DISTANCES:
            raise ConfigError(f"--layer-distance must be one of {', '.join(LAYER_DISTANCES)}, not "
                              f"{self.layer_distance!r}")
        if self.universal_drop is not None and self.universal_drop < 0:
            raise ConfigError(f"--prune-universal must be at least 0, not {self.universal_drop}")
        if not (self.alpha_grad_clip in (None, JOINT) or (isinstance(self.alpha_grad_clip, (int, float))
                                                         and self.alpha_grad_clip > 0)):
            raise ConfigError(f"alpha_grad_clip must be a positive number, None or {JOINT!r}")
        for name in ("tolerance", "distill_logit_weight", "teacher_coeff", "complexity_coeff", "alpha_lr_mult"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a non-negative number, not {value}")
        for p in (self.teacher, self.student, self.finetune):
            if p.epochs < 0 or p.lr <= 0 or p.min_steps < 0:
                raise ConfigError(f"phase {p.name}: epochs and min_steps must be >= 0 and lr > 0")
            if p.patience is not None:  # the validation split is the search's selection split: nothing selects on it
                raise ConfigError(f"phase {p.name}: NetTailor's phases run their full epochs and keep the last, so "
                                  "that the architecture search compares the teacher and the candidates on "
                                  "validation images that chose none of their weights; patience is not allowed")

    @classmethod
    def quick(cls) -> NetTailorConfig:
        """Schedules for the built-in generated tasks: minutes on 2 CPU cores."""
        return cls(alpha_lr_mult=3.0, augment="none", universal_norms=False,
                   teacher=PhaseConfig("teacher", 3, 0.02, batch_size=64),
                   student=PhaseConfig("student", 7, 0.1, batch_size=64),
                   finetune=PhaseConfig("finetune", 3, 0.05, batch_size=64))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> NetTailorConfig:
        """A config as saved. One saved by an earlier version trains its student as it did (fields it lacks take
        their earlier values, :data:`EARLIER`); its greedy pruning rule (``max_val_drop``) gives way to the search."""
        phases = {k: PhaseConfig(**data[k]) for k in ("teacher", "student", "finetune") if k in data}
        rest = {k: v for k, v in data.items() if k not in phases and k not in OBSOLETE}
        return cls(**{**EARLIER, **rest}, **phases)


OBSOLETE = ("max_val_drop",)  # config fields of earlier versions, ignored when read
# what a field added since meant before it existed
EARLIER = {"local_distill": False, "augment": "none", "universal_norms": False, "layer_distance": "mse"}
LAYER_DISTANCES = ("auto", "mse", "relative")


@dataclass
class TailoredStudent:
    """NetTailor's chosen student, its metrics and phases (what :class:`NetTailor` turns into a :class:`Trained`)."""

    student: Student
    metrics: dict
    phases: list[dict]


def relative_distance(cfg: NetTailorConfig, student: Student) -> bool:
    """Whether the layer terms of the distillation are relative to the teacher's mean square (``layer_distance``)."""
    return cfg.layer_distance == "relative" or (cfg.layer_distance == "auto" and student.linear_outputs)


def _distill(cfg: NetTailorConfig, logits: torch.Tensor, units: list, t_logits: torch.Tensor, t_units: list,
             relative: bool = False) -> torch.Tensor:
    """The distance to the teacher: ``distill_logit_weight`` times the squared distance of the logits, plus the
    squared distances of the surviving layer outputs (each over the teacher's mean square there, if ``relative``)
    summed over the number of layers ``L``. The reference weighs the logits as one layer (``1/L``), which lost
    accuracy on the built-in schedule (the README's ablation)."""
    total = cfg.distill_logit_weight * F.mse_loss(logits, t_logits)
    layers = [F.mse_loss(s, t) / (t.pow(2).mean().clamp_min(1e-12) if relative else 1.0)
              for s, t in zip(units[1:], t_units[1:]) if s is not None]
    return total + (torch.stack(layers).sum() / (len(units) - 1) if layers else 0.0)


def _student_loss(student: Student, teacher: Teacher, cfg: NetTailorConfig, complexity: bool
                  ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    relative = relative_distance(cfg, student)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = augment.augment(x, cfg.augment)
        with torch.no_grad():
            t_logits, t_units = teacher.forward_all(x)
        logits, units = student.forward_all(x, local=cfg.local_distill)
        loss = F.cross_entropy(logits, y) + cfg.teacher_coeff * _distill(cfg, logits, units, t_logits, t_units,
                                                                         relative)
        if complexity:
            loss = loss + cfg.complexity_coeff * student.expected_complexity()
        return loss, logits

    return loss_fn


def train_teacher(cfg: NetTailorConfig, backbone: UniversalBackbone, data: TaskData, trainer: Trainer
                  ) -> tuple[Teacher, PhaseResult]:
    """The teacher phase (the whole backbone fine-tuned on the task, or its finished checkpoint restored), and the
    teacher frozen in eval mode."""
    teacher = Teacher(backbone, len(data.classes)).to(trainer.device)

    def teacher_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = teacher(augment.augment(x, cfg.augment))
        return F.cross_entropy(logits, y), logits

    result = trainer.run(cfg.teacher, teacher, teacher_loss, data.train, data.val)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, result


def train_student(cfg: NetTailorConfig, backbone: UniversalBackbone, data: TaskData, trainer: Trainer,
                  teacher: Teacher) -> tuple[Student, PhaseResult]:
    """The student phase (or its finished checkpoint restored): every universal block beside its proxies, with block
    attention, distilled from ``teacher`` under the complexity term."""
    student = Student(backbone, len(data.classes), max_skip=cfg.max_skip, own_norms=cfg.universal_norms
                      ).to(trainer.device)
    # the student learns to reproduce the teacher's last features, so the teacher's head is a good start
    student.classifier.load_state_dict(teacher.classifier.state_dict())
    result = trainer.run(cfg.student, student, _student_loss(student, teacher, cfg, True), data.train, data.val,
                         on_epoch=_alphas_log(student), special=student.attention_parameters(),
                         special_lr_mult=cfg.alpha_lr_mult, special_clip=cfg.alpha_grad_clip)
    return student, result


def train_nettailor(cfg: NetTailorConfig, backbone: UniversalBackbone, data: TaskData, trainer: Trainer
                    ) -> TailoredStudent:
    """Run every phase (resuming those a previous run finished) and return the pruned, fine-tuned student."""
    device = trainer.device
    n = len(data.classes)
    teacher, teacher_phase = train_teacher(cfg, backbone, data, trainer)
    teacher_right = correct(teacher, data.test, device)
    student, student_phase = train_student(cfg, backbone, data, trainer, teacher)
    student_right = correct(student, data.test, device)
    teacher_flops = student.total_flops_dense() + student.head_cost[1]

    search = ArchitectureSearch(cfg, backbone, n, student.state_dict(), teacher, data, trainer)
    student_vs = Paired.of(correct(student, data.val, device), search.teacher_right)
    selection = search.run(teacher_flops=teacher_flops, student=student_vs)
    chosen, pruned_acc = search.restore(selection.chosen.k)
    final_right = correct(chosen, data.test, device)
    tuned = search.phase_results(selection)
    # the candidates' pruning, BN re-estimation and evaluation (their figures persist, so a resumed run keeps them)
    search_seconds = sum(c.seconds for c in selection.candidates) - sum(p.seconds for p in tuned)

    record = search.record(selection, teacher_flops=teacher_flops, student=student_vs,
                           test={"student": Paired.of(student_right, teacher_right),
                                 "chosen": Paired.of(final_right, teacher_right)})
    metrics = {"accuracy": _pct(final_right), "teacher_accuracy": _pct(teacher_right),
               "student_accuracy": _pct(student_right), "pruned_accuracy": round(pruned_acc, 3),
               "teacher_flops": int(teacher_flops), "teacher_params": int(sum(p.numel() for p in teacher.parameters())),
               **chosen.accounting(), "prune": record.to_json()}
    if not record.within_tolerance:  # --method auto reads it: NetTailor could not match its teacher
        metrics["shortfall"] = record.words
    elif not record.resolved:  # ... or could not tell whether it did
        metrics["caveat"] = record.words
    phase_rows = ([p.to_json() for p in [teacher_phase, student_phase] + tuned]
                  + [{"name": "prune", "seconds": round(max(search_seconds, 0.0), 2)}])
    return TailoredStudent(chosen, metrics, phase_rows)


def _pct(right: torch.Tensor) -> float:
    return round(percent(right), 3)


def _alphas_log(student: Student) -> Callable[[int], dict]:
    def log(epoch: int) -> dict:
        return {"alphas": [layer.alphas().detach().cpu().tolist() for layer in student.layers]}

    return log


def recalibrate_bn(model: torch.nn.Module, data: Dataset, device: torch.device, *, images: int = 1024,
                   batch_size: int = 128) -> None:
    """Re-estimate every BN running statistic of ``model`` on ``images`` training images (no gradients):
    after a block is dropped, the statistics downstream of it are stale."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
        m.train()
    seen = 0
    with torch.no_grad():
        for x, _ in make_loader(data, batch_size, shuffle=True, seed=0):
            model(to_device(x, device))
            seen += len(x)
            if seen >= images:
                break
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)


def candidate_phase(finetune: str, k: int) -> str:
    """The name of candidate ``k``'s fine-tune phase (``finetune-k3``), in checkpoints and in ``task.json``."""
    return f"{finetune}-k{k}"


class ArchitectureSearch:
    """The candidates of one trained student (:mod:`tailorrt.training.methods.parts.selection`): each is built
    afresh from the student's state, pruned, re-estimated, fine-tuned as the phase ``finetune-k<k>`` (its own
    checkpoint, so a killed search resumes) and compared with the teacher image by image on the validation split; a
    finished candidate's figures are kept in ``prune-k<k>.json`` beside it."""

    def __init__(self, cfg: NetTailorConfig, backbone: UniversalBackbone, num_classes: int,
                 state: dict[str, torch.Tensor], teacher: Teacher, data: TaskData, trainer: Trainer) -> None:
        self.cfg, self.backbone, self.num_classes = cfg, backbone, num_classes
        self.state = {k: v.detach().clone() for k, v in state.items()}
        self.teacher, self.data, self.trainer = teacher, data, trainer
        self.teacher_right = correct(teacher, data.val, trainer.device)  # the reference, on the selection split

    def pruned(self, k: int) -> tuple[Student, bool]:
        """The trained student with ``k`` universal blocks and the weak proxies dropped (not yet compacted), and
        whether it still reaches the classifier."""
        student = Student(self.backbone, self.num_classes, max_skip=self.cfg.max_skip,
                          own_norms=self.cfg.universal_norms).to(self.trainer.device)
        student.load_state_dict(self.state)
        connected = student.mark(universal_drop=k, proxy_threshold=self.cfg.proxy_threshold,
                                 proxy_relative=self.cfg.proxy_relative)
        return student, connected

    def plans(self) -> list[Plan]:
        plans = []
        for k in range(len(self.backbone.blocks) + 1):
            student, connected = self.pruned(k)
            acc = student.accounting()
            plans.append(Plan(k, connected, acc["flops"], acc["universal_blocks_kept"], acc["proxies_kept"]))
        return plans

    def phase(self, k: int) -> PhaseConfig:
        return dataclasses.replace(self.cfg.finetune, name=candidate_phase(self.cfg.finetune.name, k))

    def _record_path(self, k: int) -> Path | None:
        return self.trainer.work_dir / f"prune-k{k}.json" if self.trainer.work_dir else None

    def evaluate(self, k: int) -> Candidate:
        """Prune ``k``, re-estimate, fine-tune and compare with the teacher (or read a candidate an earlier run
        finished; one finished by a version before the paired comparison is rebuilt from its checkpoint)."""
        path = self._record_path(k)
        finished = path is not None and path.is_file() and self.trainer.completed(self.phase(k).name) is not None
        if finished:
            try:
                return Candidate.from_json(read_json(path))
            except KeyError:
                pass
        t0 = time.perf_counter()
        student, before = self._prepared(k)
        result = self._finetune(k, student)
        acc = student.accounting()
        right = correct(student, self.data.val, self.trainer.device)
        seconds = float(read_json(path)["seconds"]) if finished else round(time.perf_counter() - t0, 2)
        candidate = Candidate(k, acc["universal_blocks_kept"], acc["proxies_kept"], acc["flops"], round(before, 3),
                              round(result.val_accuracy, 3), seconds, Paired.of(right, self.teacher_right))
        if path is not None and self.trainer.cluster.main:
            write_json(path, candidate.to_json())
        return candidate

    def _prepared(self, k: int, split: str = "val") -> tuple[Student, float]:
        """Candidate ``k`` pruned, its batch-norm statistics re-estimated and compacted, with its accuracy on
        ``split`` before any fine-tuning."""
        student, connected = self.pruned(k)
        if not connected:
            raise ConfigError(f"pruning {k} universal blocks and the proxies below {self.cfg.proxy_threshold} "
                              "leaves no path to the classifier; prune fewer blocks or lower the threshold")
        recalibrate_bn(student, self.data.train, self.trainer.device)
        before = accuracy(student, getattr(self.data, split), self.trainer.device)
        student.compact()
        return student, before

    def _finetune(self, k: int, student: Student) -> PhaseResult:
        """Fine-tune candidate ``k`` without the complexity term (or restore its finished fine-tune)."""
        return self.trainer.run(self.phase(k), student, _student_loss(student, self.teacher, self.cfg, False),
                                self.data.train, self.data.val, on_epoch=_alphas_log(student),
                                special=student.attention_parameters(), special_lr_mult=self.cfg.alpha_lr_mult,
                                special_clip=self.cfg.alpha_grad_clip)

    def run(self, *, teacher_flops: int, student: Paired) -> Selection:
        """The fixed rule when ``universal_drop`` is given, else the paper's search under the FLOPs cap; ``student``
        is the unpruned student against the teacher on the selection split, the start of the monotone fit."""
        if self.cfg.universal_drop is not None:
            return choose([self.evaluate(self.cfg.universal_drop)], self.cfg.tolerance, student.diff)
        plans = self.plans()
        ks = eligible(plans, teacher_flops) or [min(plans, key=lambda p: (not p.connected, p.flops)).k]
        return search(ks, self.evaluate, self.cfg.tolerance, student.diff)

    def restore(self, k: int) -> tuple[Student, float]:
        """The chosen candidate as fine-tuned, and its test accuracy right after pruning (before fine-tuning)."""
        student, pruned_acc = self._prepared(k, "test")
        self._finetune(k, student)  # finished: restores its checkpoint
        return student, pruned_acc

    def phase_results(self, selection: Selection) -> list[PhaseResult]:
        """The fine-tune phases the search ran, in the order tried."""
        return [self.trainer.completed(self.phase(k).name) or PhaseResult(self.phase(k).name, 0, 0.0, 0.0)
                for k in selection.tried]

    def record(self, selection: Selection, *, teacher_flops: int, student: Paired,
               test: dict[str, Paired] | None = None) -> SearchRecord:
        """``metrics.prune`` of ``task.json``: the rule, the reference, every candidate, the choice and the verdict
        (``student``: the unpruned student against the teacher on the selection split; ``test``: the same kind of
        comparisons on the test split, recorded for the reader and never used by the rule)."""
        cfg = self.cfg
        if cfg.universal_drop is not None:
            rule = f"drop the {cfg.universal_drop} lowest-attention universal blocks (--prune-universal)"
        else:
            rule = (f"the leanest of candidates k (the k lowest-attention universal blocks dropped, then fine-tuned) "
                    f"whose accuracy minus the teacher's, image by image on the validation split and read through "
                    f"the non-increasing fit over the student and the candidates in order of k, is at least "
                    f"-{cfg.tolerance:g} points, or the unpruned student's lead over the teacher minus "
                    f"{cfg.tolerance:g} where it led (pruning may not spend that lead), among those at most the "
                    "teacher's FLOPs")
        fitted = selection.fitted[selection.chosen.k]
        verdict = Verdict(cfg.tolerance, selection.chosen.vs_teacher, student, fitted >= -cfg.tolerance, fitted,
                          bar_met=selection.within_tolerance)
        return SearchRecord(rule, cfg.universal_drop is not None, cfg.tolerance, cfg.proxy_threshold,
                            cfg.proxy_relative, len(self.teacher_right), _pct(self.teacher_right), int(teacher_flops),
                            selection.chosen.k, selection.candidates, dict(selection.fitted), student,
                            verdict.within_tolerance, verdict.bar_met, verdict.resolved, verdict.short,
                            verdict.words(), dict(test or {}))


# ---------------------------------------------------------------------------------------------- ONNX


def emit_student(g: GraphBuilder, student: Student) -> None:
    """The pruned student from ``input`` to ``logits``."""
    student.eval()
    x, c = emit_sequence(g, list(student.stem), INPUT, 1.0)
    outs: list[tuple[str, float] | None] = [(x, c)]
    for l, layer in enumerate(student.layers, start=1):
        alphas = layer.alphas().detach().cpu().double().tolist()
        recent = outs[::-1][: len(layer.proxies) + 1]
        kept = [(i, recent[max(i - 1, 0)]) for i in range(len(alphas))
                if bool(layer.keep[i]) and recent[max(i - 1, 0)] is not None and alphas[i] > 0]
        if not kept:
            outs.append(None)
            continue
        universal = kept[0][0] == 0
        c_out = alphas[0] * kept[0][1][1] if universal and passes_input(layer.universal) else 1.0
        check_positive(c_out, f"the output scale of layer {l}")
        terms = []
        for i, (v, c_src) in kept:
            mult = alphas[i] / c_out
            if i == 0:
                terms.append(emit_block(g, layer.universal, v, c_src, mult))
            else:
                proxy = layer.proxies[i - 1]
                terms.append(emit_sequence(g, [proxy.pool, *proxy.body], v, c_src, mult)[0])
        out = g.add(terms)
        if not (layer.linear or (len(terms) == 1 and universal)):  # a ResNet block ends in ReLU already
            out = g.relu(out)
        outs.append((out, c_out))
    if outs[-1] is None:
        raise ExportError("the pruned network has no path to the classifier")
    emit_head(g, student.head_norm, student.classifier, *outs[-1])



# ---------------------------------------------------------------------------------------------- the method


NAME = "nettailor"


class NetTailor(Method):
    family = NAME
    names = (NAME,)
    syntax = NAME
    help = ("teacher fine-tuning, then a student with task blocks beside the frozen universal ones, block "
            "attention, distillation and pruning (the default; its pack is named after the task)")
    examples = (NAME,)
    candidates = (NAME,)
    default_pack = True
    teacher_phase = "teacher"
    options = (
        MethodOption("teacher-epochs", int, "Epochs of the teacher phase.", "teacher.epochs"),
        MethodOption("student-epochs", int, "Epochs of the student phase (exactly these: the minimum of steps "
                     "then applies only with --student-min-steps).", "student.epochs"),
        MethodOption("student-min-steps", int, "At least this many student steps: a small training set gets more "
                     "epochs than --student-epochs (real data: 11200; built-in tasks: 0, off).", "student.min_steps"),
        MethodOption("finetune-epochs", int, "Epochs of each candidate's fine-tune (exactly these: the minimum of "
                     "steps then applies only with --finetune-min-steps).", "finetune.epochs"),
        MethodOption("finetune-min-steps", int, "At least this many steps in each candidate's fine-tune: a small "
                     "training set gets more epochs than --finetune-epochs (real data: 2800; built-in tasks: 0, off).",
                     "finetune.min_steps"),
        MethodOption("max-skip", int, "Proxies read the last K layers (3).", "max_skip"),
        MethodOption("complexity-coeff", float, "Weight of the expected-complexity term (0.3).", "complexity_coeff"),
        MethodOption("teacher-coeff", float, "Weight of the distillation term (10).", "teacher_coeff"),
        MethodOption("distill-logit-weight", float, "Weight of the distillation's logit term against its mean "
                     "layer term (1; the reference's is 1/L for L layers).", "distill_logit_weight"),
        MethodOption("local-distill", bool, "Layer-local distillation, as the reference (the default): each "
                     "layer's distance to the teacher trains only its own blocks.", "local_distill"),
        MethodOption("layer-distance", str, "Each layer's distillation term: mse (the reference), relative (over "
                     "the teacher's mean square of the layer) or auto (the default: relative where the backbone's "
                     "block outputs are linear, MBConv).", "layer_distance"),
        MethodOption("universal-norms", bool, "The task also owns and trains the scale and shift of the "
                     "universal blocks' batch norms; their convolutions stay shared (real data's default; the "
                     "built-in tasks': off).", "universal_norms"),
        MethodOption("proxy-threshold", float, "Prune proxies whose alpha is below this (0.05).", "proxy_threshold"),
        MethodOption("proxy-relative", float, "Also prune proxies below this fraction of the strongest proxy of "
                     "their layer (0: off).", "proxy_relative"),
        MethodOption("prune-universal", int, "Drop exactly the N lowest-alpha universal blocks (default: the "
                     "paper's search over N).", "universal_drop"),
        MethodOption("tolerance", float, "The search keeps the leanest candidate within this many points of the "
                     "teacher, compared image by image on the validation split (0.5).", "tolerance"),
        MethodOption("augment", str, "Training batches of every phase: none (the built-in tasks' default), crop "
                     "(a random translation by reflection padding; real data's default) or crop-flip (and a "
                     "left-right flip; not for digits or text).", "augment"),
        MethodOption("alpha-lr-mult", float, "Learning-rate multiplier of the attention logits.", "alpha_lr_mult"),
    )

    def default_config(self, builtin: bool) -> NetTailorConfig:
        return NetTailorConfig.quick() if builtin else NetTailorConfig()

    def config_from_json(self, data: dict) -> NetTailorConfig:
        return NetTailorConfig.from_json(data)

    def train(self, name: str, cfg: NetTailorConfig, backbone: UniversalBackbone, data: TaskData,
              trainer: Trainer) -> Trained:
        result = train_nettailor(cfg, backbone, data, trainer)
        return Trained(result.student, result.metrics, result.phases,
                       {"architecture": LayerBlocks.to_json(result.student.architecture()),
                        "config": cfg.to_json()})

    def build(self, backbone: UniversalBackbone, record: TaskRecord) -> Student:
        cfg = self.config_from_json(record.raw["config"])  # NetTailor's own field, parsed once
        return Student(backbone, len(record.classes), max_skip=cfg.max_skip, own_norms=cfg.universal_norms)

    def emit(self, g: GraphBuilder, net: Student) -> None:
        emit_student(g, net)

    def architecture_figure(self, plt, record: TaskRecord):
        return pictures.nettailor_architecture(plt, LayerBlocks.from_json(record.raw["architecture"]))

    def attention_figure(self, plt, record: TaskRecord):
        search = _search_record(record)  # the student phase and the chosen candidate's fine-tune, not every candidate's
        finetune = self.config_from_json(record.raw["config"]).finetune.name
        shown = None if search is None else {"student", candidate_phase(finetune, search.chosen)}
        history = pictures.attention_history(record, shown)
        return None if history is None else pictures.alpha_figure(plt, *history)

    def selection_figure(self, plt, record: TaskRecord):
        search = _search_record(record)
        return None if search is None else pictures.candidates_figure(plt, search)

    def selection_table(self, record: TaskRecord) -> tuple[list[str], list[list[str]]] | None:
        search = _search_record(record)
        if search is None:
            return None
        head = ["k", "universal kept", "proxies kept", "FLOPs vs teacher", "val % after pruning", "val % fine-tuned",
                "vs teacher on val (95%)", ""]
        rows = [[str(c.k), str(c.universal_kept), str(c.proxies_kept), f"{c.flops / search.teacher_flops:.2f}x",
                 f"{c.val_before:.2f}", f"{c.val_accuracy:.2f}", c.vs_teacher.bracketed(),
                 "chosen" if c.k == search.chosen else ""] for c in search.candidates]
        rows.append(["student, before pruning", "all", "", "", "", "", search.student_vs_teacher.bracketed(), ""])
        return head, rows

    def describe(self, record: TaskRecord) -> str:
        search = _search_record(record)
        if search is None or record.metrics is None:
            return ""
        n, k, tried = record.metrics.universal_blocks_total, search.chosen, len(search.candidates)
        if search.fixed:
            head = f"dropped {k}/{n} (--prune-universal)"
        elif search.within_tolerance and not search.bar_met:
            head = f"dropped {k}/{n} ({tried} tried, none within {search.tolerance} of the student)"
        elif search.within_tolerance:
            head = f"dropped {k}/{n} ({tried} tried)"
        else:
            head = f"dropped {k}/{n} ({tried} tried, none within {search.tolerance}: the best)"
        head += f", {search.kept.vs_teacher.words()} vs teacher on val"
        return head if search.resolved else f"{head} (too few images for {search.tolerance:g})"

    def verdict(self, record: TaskRecord) -> str:
        search = _search_record(record)
        return "" if search is None else f"architecture search: {search.words}"


def _search_record(record: TaskRecord) -> SearchRecord | None:
    """The architecture search of a NetTailor task (``metrics.prune``), or None: no search (older packs), or one
    from before the paired comparison."""
    prune = record.metrics.extra.get("prune") if record.metrics else None
    return SearchRecord.from_json(prune) if prune and "candidates" in prune else None


register(NetTailor())
