"""One training loop for every phase: SGD with a cosine schedule, a checkpoint after every epoch,
resume from the last finished epoch, validation accuracy per epoch, progress bars."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from tailorrt.errors import TrainingDivergedError
from tailorrt.training.distributed import Cluster
from tailorrt.training.io import load_metadata, load_tensors, save_tensors

# (inputs, labels) -> (loss, logits)
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
JOINT = "joint"  # special parameters clipped together with the others, at the phase's grad_clip
# a phase that chooses nothing on validation (no patience: NetTailor's keep their last epoch) measures it about this
# many times, and always at its last epoch: on 2,000 images a fine-tune of 45 epochs spent as long validating 6,000
# images after each as training
VAL_POINTS = 10


@dataclass
class PhaseConfig:
    """One optimisation phase (teacher, student, fine-tune...)."""

    name: str
    epochs: int
    lr: float
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 64
    warmup_epochs: float = 0.0
    grad_clip: float | None = 5.0  # max gradient norm; None disables clipping
    patience: int | None = None  # early stopping: end after this many epochs without a better val accuracy
    min_steps: int = 0  # at least this many optimisation steps: a small training set gets more epochs

    def for_steps(self, steps_per_epoch: int) -> PhaseConfig:
        """This phase with enough epochs of ``steps_per_epoch`` steps for :attr:`min_steps` (else unchanged)."""
        if self.min_steps <= 0 or self.epochs * steps_per_epoch >= self.min_steps or steps_per_epoch < 1:
            return self
        return dataclasses.replace(self, epochs=math.ceil(self.min_steps / steps_per_epoch))

    def validates_after(self, epoch: int) -> bool:
        """Whether validation accuracy is measured after ``epoch`` (0-based): every epoch where early stopping
        chooses on it, else about :data:`VAL_POINTS` times over the phase, the last epoch always."""
        if self.patience is not None or epoch + 1 >= self.epochs:
            return True
        return (epoch + 1) % math.ceil(self.epochs / VAL_POINTS) == 0

    def lr_at(self, progress: float) -> float:
        """Cosine decay over the phase (``progress`` in epochs), with optional linear warm-up."""
        if self.warmup_epochs and progress < self.warmup_epochs:
            return self.lr * (progress + 1e-3) / self.warmup_epochs
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(1.0, progress / max(self.epochs, 1))))


@dataclass
class PhaseResult:
    name: str
    epochs: int
    seconds: float
    val_accuracy: float
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class Progress:
    """What the loop reports to; the CLI plugs in rich bars, the library default is silent."""

    def start(self, label: str, total: int, completed: int = 0) -> None: ...

    def advance(self, n: int = 1, **metrics: float) -> None: ...

    def finish(self) -> None: ...


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                sampler: Sampler | None = None) -> DataLoader:
    """Batches of ``ds``; with a ``sampler`` (this process's share, already shuffled) it decides the order."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, generator=gen,
                      drop_last=drop_last, num_workers=0, sampler=sampler)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``, image batches in the channels-last layout: PyTorch's CPU convolutions, batch norms
    and max-pools run a NetTailor student's training step about a quarter faster on it than on NCHW."""
    return x.to(device, memory_format=torch.channels_last) if x.dim() == 4 else x.to(device)


@torch.no_grad()
def predict_logits(forward: Callable[[torch.Tensor], torch.Tensor], ds: Dataset, device: torch.device,
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels of a dataset (model already in eval mode)."""
    outs, labels = [], []
    for x, y in make_loader(ds, batch_size, shuffle=False):
        outs.append(forward(to_device(x, device)).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(outs), torch.cat(labels)


def correct(model: nn.Module, ds: Dataset, device: torch.device,
            forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Which items of ``ds`` the model's top-1 class gets right (a bool tensor), model in eval mode (restored
    afterwards)."""
    was = model.training
    model.eval()
    try:
        logits, labels = predict_logits(forward or model, ds, device)
    finally:
        model.train(was)
    return logits.argmax(1) == labels


def percent(right: torch.Tensor) -> float:
    """Accuracy in percent from which items a model gets right (:func:`correct`)."""
    return 100.0 * float(right.float().mean()) if len(right) else 0.0


def accuracy(model: nn.Module, ds: Dataset, device: torch.device,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Top-1 accuracy in percent, model in eval mode (restored afterwards)."""
    return percent(correct(model, ds, device, forward))


class Trainer:
    """Runs phases; with a ``work_dir`` every epoch is checkpointed and a rerun resumes. Under torchrun
    (``cluster``), each process trains on its share of the batches with DDP and rank 0 writes the checkpoints."""

    def __init__(self, *, device: torch.device, work_dir: Path | None = None, progress: Progress | None = None,
                 seed: int = 0, cluster: Cluster = Cluster()) -> None:
        self.device = device
        self.work_dir = Path(work_dir) if work_dir else None
        self.cluster = cluster
        self.progress = progress if progress is not None and cluster.main else Progress()
        self.seed = seed

    def _loader(self, train: Dataset, phase: PhaseConfig, epoch: int) -> DataLoader:
        """An epoch's shuffled training batches (this process's share of them)."""
        seed = self.seed * 1000 + epoch
        return make_loader(train, self.cluster.batch_size(phase.batch_size), shuffle=True, seed=seed, drop_last=True,
                           sampler=self.cluster.sampler(train, seed, epoch))

    def _accuracy(self, model: nn.Module, ds: Dataset, forward: Callable[[torch.Tensor], torch.Tensor] | None) -> float:
        """Validation accuracy, each process measuring its share of ``ds``."""
        if not self.cluster.distributed:
            return accuracy(model, ds, self.device, forward)
        share = self.cluster.shard(ds)
        right = accuracy(model, share, self.device, forward) * len(share) / 100.0
        right, total = self.cluster.sum([right, len(share)], self.device)
        return 100.0 * right / total if total else 0.0

    def _ckpt(self, phase: str) -> Path | None:
        return self.work_dir / f"{phase}.safetensors" if self.work_dir else None

    def completed(self, phase: str) -> PhaseResult | None:
        """The result of a phase finished in an earlier run, or None."""
        path = self._ckpt(phase)
        if path is None or not path.is_file():
            return None
        meta = load_metadata(path)
        return PhaseResult(**json.loads(meta["result"])) if meta.get("done") == "1" else None

    def restore(self, phase: str, model: nn.Module) -> None:
        """Load the model state saved at the end of a completed phase."""
        state = load_tensors(self._ckpt(phase))
        model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})

    def run(self, phase: PhaseConfig, model: nn.Module, loss_fn: LossFn, train: Dataset, val: Dataset,
            *, eval_forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
            on_epoch: Callable[[int], dict] | None = None,
            special: list[nn.Parameter] | None = None, special_lr_mult: float = 1.0,
            special_clip: float | str | None = JOINT) -> PhaseResult:
        """Train ``model``'s trainable parameters for one phase, resuming if a checkpoint exists.

        ``special`` parameters (e.g. block attention) get ``special_lr_mult`` times the learning rate
        and no weight decay; their gradient norm is clipped with the others' (:data:`JOINT`), or on its own at
        ``special_clip`` (None: not at all) while the others keep the phase's ``grad_clip``.
        """
        done = self.completed(phase.name)
        if done is not None:
            self.restore(phase.name, model)
            return done
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        special_ids = {id(p) for p in special or []}
        groups = [{"params": [p for p in params.values() if id(p) not in special_ids], "lr_mult": 1.0,
                   "weight_decay": phase.weight_decay}]
        if special_ids:
            groups.append({"params": [p for p in params.values() if id(p) in special_ids],
                           "lr_mult": special_lr_mult, "weight_decay": 0.0})
        opt = torch.optim.SGD(groups, lr=phase.lr, momentum=phase.momentum)
        clips = [(list(params.values()), phase.grad_clip)] if special_clip == JOINT or not special_ids else \
            [(g["params"], clip) for g, clip in zip(groups, (phase.grad_clip, special_clip))]
        start_epoch, history, seconds = self._resume(phase, model, opt, params)
        loader_len = len(self._loader(train, phase, 0))
        phase = phase.for_steps(loader_len)
        self.progress.start(phase.name, phase.epochs * loader_len, start_epoch * loader_len)
        measured_rows = [r for r in history if r["val_accuracy"] is not None]
        val_acc = measured_rows[-1]["val_accuracy"] if measured_rows else 0.0
        best = max(measured_rows, key=lambda r: r["val_accuracy"]) if measured_rows else None
        best_state = None  # the model at its best epoch, when early stopping may end the phase
        model.train()
        step_fn = self.cluster.wrap(model, loss_fn, self.device)  # in training mode: it reads what stays frozen
        for epoch in range(start_epoch, phase.epochs):
            if phase.patience is not None and best is not None and epoch - best["epoch"] >= phase.patience:
                break
            t0 = time.perf_counter()
            model.train()
            loader = self._loader(train, phase, epoch)
            total_loss, correct, seen = 0.0, 0, 0
            for step, (x, y) in enumerate(loader):
                for g in opt.param_groups:
                    g["lr"] = phase.lr_at(epoch + step / loader_len) * g["lr_mult"]
                x, y = to_device(x, self.device), torch.as_tensor(y).to(self.device)
                loss, logits = step_fn(x, y)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(f"{phase.name}: loss became {loss.item()} at epoch {epoch + 1}; "
                                                "lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for group, clip in clips:
                    if clip:
                        nn.utils.clip_grad_norm_(group, clip)
                opt.step()
                total_loss += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                self.progress.advance(1, loss=total_loss / seen)
            measured = phase.validates_after(epoch)
            if measured:
                val_acc = self._accuracy(model, val, eval_forward)
            self.progress.advance(0, loss=total_loss / max(seen, 1), val=val_acc)
            seconds += time.perf_counter() - t0
            row = {"epoch": epoch + 1, "loss": total_loss / max(seen, 1),
                   "train_accuracy": 100.0 * correct / max(seen, 1), "val_accuracy": val_acc if measured else None}
            if on_epoch:
                row.update(on_epoch(epoch))
            history.append(row)
            if phase.patience is not None and (best is None or val_acc > best["val_accuracy"]):
                best = row
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self._save(phase, model, opt, params, epoch + 1, history, seconds, done=False)
        self.progress.finish()
        if best_state is not None and best is not history[-1]:  # early stopping keeps the best epoch's model
            model.load_state_dict(best_state)
        if phase.patience is not None and best is not None:
            val_acc = best["val_accuracy"]
        result = PhaseResult(phase.name, len(history), round(seconds, 2), val_acc, history)
        self._save(phase, model, opt, params, phase.epochs, history, seconds, done=True, result=result)
        return result

    def _resume(self, phase: PhaseConfig, model: nn.Module, opt: torch.optim.Optimizer,
                params: dict[str, nn.Parameter]) -> tuple[int, list[dict], float]:
        path = self._ckpt(phase.name)
        if path is None or not path.is_file():
            return 0, [], 0.0
        state = load_tensors(path)
        meta = load_metadata(path)
        model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        for name, p in params.items():
            buf = state.get(f"momentum.{name}")
            if buf is not None:
                opt.state[p]["momentum_buffer"] = buf.to(p.device)
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        return int(meta["epoch"]), json.loads(meta["history"]), float(meta["seconds"])

    def _save(self, phase: PhaseConfig, model: nn.Module, opt: torch.optim.Optimizer,
              params: dict[str, nn.Parameter], epoch: int, history: list[dict], seconds: float, *, done: bool,
              result: PhaseResult | None = None) -> None:
        path = self._ckpt(phase.name)
        if path is None or not self.cluster.main:  # every process holds the same state; rank 0 writes it
            return
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        if not done:
            for name, p in params.items():
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    tensors[f"momentum.{name}"] = buf
            tensors["rng"] = torch.get_rng_state()
        meta = {"epoch": str(epoch), "history": json.dumps(history), "seconds": str(seconds),
                "done": "1" if done else "0"}
        if result is not None:
            meta["result"] = json.dumps(result.to_json())
        save_tensors(path, tensors, meta)

