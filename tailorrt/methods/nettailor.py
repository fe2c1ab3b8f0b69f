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

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from tailorrt.backbones import UniversalBackbone
from tailorrt.datasets import TaskData
from tailorrt.errors import ConfigError, ExportError
from tailorrt.io import load_metadata, load_tensors, save_tensors
from tailorrt.methods import pictures
from tailorrt.methods.base import Method, MethodOption, Trained, register
from tailorrt.methods.student import Student
from tailorrt.onnx_graph import INPUT, GraphBuilder, check_positive
from tailorrt.onnx_layers import emit_block, emit_head, emit_sequence, passes_input
from tailorrt.teacher import Teacher
from tailorrt.training import PhaseConfig, Trainer, accuracy, make_loader


@dataclass
class NetTailorConfig:
    """NetTailor hyper-parameters. Defaults follow the paper; :meth:`quick` fits the built-in tasks."""

    max_skip: int = 3
    teacher_coeff: float = 10.0
    complexity_coeff: float = 0.3
    proxy_threshold: float = 0.05
    universal_drop: int | None = None  # the paper's rule: drop the N lowest-alpha universal blocks
    max_val_drop: float = 1.0  # else: drop universal blocks, lowest alpha first, while val acc stays within this
    alpha_lr_mult: float = 1.0  # learning-rate multiplier of the block-attention logits (no weight decay)
    teacher: PhaseConfig = field(default_factory=lambda: PhaseConfig("teacher", 30, 0.01, batch_size=32))
    student: PhaseConfig = field(default_factory=lambda: PhaseConfig("student", 30, 0.1, batch_size=32))
    finetune: PhaseConfig = field(default_factory=lambda: PhaseConfig("finetune", 15, 0.01, batch_size=32))

    def __post_init__(self) -> None:
        if self.max_skip < 1:
            raise ConfigError("max_skip must be at least 1")
        if not 0 <= self.proxy_threshold < 1:
            raise ConfigError("proxy_threshold must be in [0, 1)")
        for p in (self.teacher, self.student, self.finetune):
            if p.epochs < 0 or p.lr <= 0:
                raise ConfigError(f"phase {p.name}: epochs must be >= 0 and lr > 0")

    @classmethod
    def quick(cls) -> NetTailorConfig:
        """Schedules for the built-in generated tasks: minutes on 2 CPU cores."""
        return cls(alpha_lr_mult=3.0, teacher=PhaseConfig("teacher", 3, 0.02, batch_size=64),
                   student=PhaseConfig("student", 8, 0.1, batch_size=64),
                   finetune=PhaseConfig("finetune", 2, 0.01, batch_size=64))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> NetTailorConfig:
        phases = {k: PhaseConfig(**data[k]) for k in ("teacher", "student", "finetune") if k in data}
        rest = {k: v for k, v in data.items() if k not in phases}
        return cls(**rest, **phases)


@dataclass
class TrainedTask:
    """What a method hands to the pack writer."""

    student: Student
    metrics: dict
    phases: list[dict]


def _distill(logits: torch.Tensor, units: list, t_logits: torch.Tensor, t_units: list) -> torch.Tensor:
    """Mean squared distance to the teacher: logits plus the mean over surviving layer outputs."""
    acts = [F.mse_loss(s, t) for s, t in zip(units[1:], t_units[1:]) if s is not None]
    return F.mse_loss(logits, t_logits) + (torch.stack(acts).mean() if acts else 0.0)


def _student_loss(student: Student, teacher: Teacher, cfg: NetTailorConfig, complexity: bool
                  ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            t_logits, t_units = teacher.forward_all(x)
        logits, units = student.forward_all(x)
        loss = F.cross_entropy(logits, y) + cfg.teacher_coeff * _distill(logits, units, t_logits, t_units)
        if complexity:
            loss = loss + cfg.complexity_coeff * student.expected_complexity()
        return loss, logits

    return loss_fn


def train_nettailor(cfg: NetTailorConfig, backbone: UniversalBackbone, data: TaskData, trainer: Trainer
                    ) -> TrainedTask:
    """Run every phase (resuming those a previous run finished) and return the pruned, fine-tuned student."""
    device = trainer.device
    n = len(data.classes)
    teacher = Teacher(backbone, n).to(device)

    def teacher_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = teacher(x)
        return F.cross_entropy(logits, y), logits

    phases = [trainer.run(cfg.teacher, teacher, teacher_loss, data.train, data.val)]
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher_acc = accuracy(teacher, data.test, device)

    student = Student(backbone, n, max_skip=cfg.max_skip).to(device)
    # the student learns to reproduce the teacher's last features, so the teacher's head is a good start
    student.classifier.load_state_dict(teacher.classifier.state_dict())

    def alphas_log(epoch: int) -> dict:
        return {"alphas": [layer.alphas().detach().cpu().tolist() for layer in student.layers]}

    phases.append(trainer.run(cfg.student, student, _student_loss(student, teacher, cfg, True), data.train,
                              data.val, on_epoch=alphas_log, special=student.attention_parameters(),
                              special_lr_mult=cfg.alpha_lr_mult))
    student_acc = accuracy(student, data.test, device)

    t0 = time.perf_counter()
    prune_info = _prune(cfg, student, data, trainer)
    prune_seconds = time.perf_counter() - t0
    pruned_acc = accuracy(student, data.test, device)
    student.compact()
    phases.append(trainer.run(cfg.finetune, student, _student_loss(student, teacher, cfg, False), data.train,
                              data.val, on_epoch=alphas_log, special=student.attention_parameters(),
                              special_lr_mult=cfg.alpha_lr_mult))
    final_acc = accuracy(student, data.test, device)

    teacher_flops = student.total_flops_dense() + student.head_cost[1]
    metrics = {"accuracy": round(final_acc, 3), "teacher_accuracy": round(teacher_acc, 3),
               "student_accuracy": round(student_acc, 3), "pruned_accuracy": round(pruned_acc, 3),
               "teacher_flops": int(teacher_flops), "teacher_params": int(sum(p.numel() for p in teacher.parameters())),
               **student.accounting(), "prune": prune_info}
    phase_rows = [p.to_json() for p in phases] + [{"name": "prune", "seconds": round(prune_seconds, 2)}]
    return TrainedTask(student, metrics, phase_rows)


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
            model(x.to(device))
            seen += len(x)
            if seen >= images:
                break
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)


def _prune(cfg: NetTailorConfig, student: Student, data: TaskData, trainer: Trainer) -> dict:
    """Prune once and remember the result in the work dir, so a resumed run prunes identically."""
    path = trainer.work_dir / "prune.safetensors" if trainer.work_dir else None
    if path is not None and path.is_file():
        saved = load_tensors(path)
        student.load_state_dict({k[6:]: v for k, v in saved.items() if k.startswith("state.")}, strict=False)
        return json.loads(load_metadata(path)["info"])
    device = trainer.device
    val = data.val
    before = accuracy(student, val, device)
    student.prune(universal_drop=cfg.universal_drop or 0, proxy_threshold=cfg.proxy_threshold)
    info: dict = {"val_accuracy_before": round(before, 3), "proxy_threshold": cfg.proxy_threshold}
    if cfg.universal_drop is not None:
        info["rule"] = f"drop {cfg.universal_drop} lowest-alpha universal blocks"
    else:
        info["rule"] = (f"drop lowest-alpha universal blocks while val accuracy (after BN recalibration) stays "
                        f"within {cfg.max_val_drop} points")
        tried = []
        for l in student.universal_order():
            snapshot = {k: v.clone() for k, v in student.named_buffers()}  # pruning changes buffers only
            with torch.no_grad():
                student.layers[l].keep[0] = False
            connected = student.settle()
            acc = 0.0
            if connected:
                recalibrate_bn(student, data.train, device)
                acc = accuracy(student, val, device)
            ok = connected and acc >= before - cfg.max_val_drop
            tried.append({"layer": l + 1, "val_accuracy": round(acc, 3), "dropped": ok})
            if not ok:
                student.load_state_dict(snapshot, strict=False)
        info["tried"] = tried
    recalibrate_bn(student, data.train, device)
    info["val_accuracy_after"] = round(accuracy(student, val, device), 3)
    if path is not None:
        # keep flags and recalibrated BN statistics; the weights come from the student phase's checkpoint
        save_tensors(path, {f"state.{k}": v for k, v in student.named_buffers()}, {"info": json.dumps(info)})
    return info


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
        out = terms[0] if len(terms) == 1 and universal else g.relu(g.add(terms))  # a block ends in ReLU already
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
        MethodOption("student-epochs", int, "Epochs of the student phase.", "student.epochs"),
        MethodOption("finetune-epochs", int, "Epochs of the fine-tune phase.", "finetune.epochs"),
        MethodOption("max-skip", int, "Proxies read the last K layers (3).", "max_skip"),
        MethodOption("complexity-coeff", float, "Weight of the expected-complexity term (0.3).", "complexity_coeff"),
        MethodOption("teacher-coeff", float, "Weight of the distillation term (10).", "teacher_coeff"),
        MethodOption("proxy-threshold", float, "Prune proxies whose alpha is below this (0.05).", "proxy_threshold"),
        MethodOption("prune-universal", int, "Drop the N lowest-alpha universal blocks (default: drop while val "
                     "accuracy stays within --max-val-drop).", "universal_drop"),
        MethodOption("max-val-drop", float, "Accuracy budget (points) of automatic pruning (1.0).", "max_val_drop"),
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
                       {"architecture": result.student.architecture(), "config": cfg.to_json()})

    def build(self, backbone: UniversalBackbone, meta: dict) -> Student:
        return Student(backbone, len(meta["classes"]), max_skip=int(meta["config"]["max_skip"]))

    def emit(self, g: GraphBuilder, net: Student) -> None:
        emit_student(g, net)

    def architecture_figure(self, plt, meta: dict):
        return pictures.nettailor_architecture(plt, meta["architecture"])

    def attention_figure(self, plt, meta: dict):
        history = pictures.attention_history(meta)
        return None if history is None else pictures.alpha_figure(plt, *history)


register(NetTailor())
