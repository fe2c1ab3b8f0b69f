"""Training one task over several processes (``tailor train --nproc N``, or ``torchrun --nproc-per-node N -m
tailorrt.cli train ...``): DistributedDataParallel over the task's trainable parts only.

torchrun starts the processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :meth:`Cluster.from_env` reads
them. Each process holds the frozen backbone (it is never all-reduced nor broadcast: DDP ignores its parameters and
the statistics of its batch norms, which stay in eval mode), sees its own share of every phase's batches
(``DistributedSampler``; each phase's batch size is the global one, split between the processes) and a share of
the validation set (counts summed over the processes). Rank 0 alone writes the model directory: the backbone,
checkpoints and the pack, which is the same format as a single-process run's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Subset

from tailorrt.errors import ConfigError


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (one process: rank 0 of 1, nothing distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Cluster:
        """The place torchrun gave this process, or a single process when not started by torchrun."""
        try:
            return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                       int(os.environ.get("LOCAL_RANK", "0")))
        except ValueError as e:
            raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({e})") from e

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and reports progress (rank 0)."""
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """This process's device: with ``cuda``, the GPU of its local rank."""
        return torch.device(f"cuda:{self.local_rank}") if name.startswith("cuda") and self.distributed else \
            torch.device(name)

    def start(self, device: torch.device) -> None:
        """Join the process group: NCCL between GPUs, gloo on CPUs."""
        if self.distributed and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=self.rank,
                                    world_size=self.world_size, device_id=device if device.type == "cuda" else None)

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block (downloads, writes) before the others do."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def batch_size(self, global_batch: int) -> int:
        """Each process's share of a phase's batch."""
        return max(1, global_batch // self.world_size)

    def sampler(self, ds: Dataset, seed: int, epoch: int) -> DistributedSampler | None:
        """This process's shuffled share of ``ds`` for ``epoch`` (None when there is one process)."""
        if not self.distributed:
            return None
        sampler = DistributedSampler(ds, self.world_size, self.rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        return sampler

    def shard(self, ds: Dataset) -> Dataset:
        """Every ``world_size``-th item of ``ds`` from this rank's (evaluation: each item seen once overall)."""
        return Subset(ds, range(self.rank, len(ds), self.world_size)) if self.distributed else ds

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over the processes."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def wrap(self, model: nn.Module, loss_fn: Callable, device: torch.device) -> Callable:
        """``loss_fn`` (which runs ``model``) as a DDP module: the gradients of ``model``'s trainable parameters are
        averaged over the processes in backward, and the buffers of its modules in training mode (the task's own
        batch norms) follow rank 0's. Frozen parameters and the buffers of frozen (eval-mode) modules are left out:
        the backbone is neither all-reduced nor broadcast. One process: ``loss_fn`` itself."""
        if not self.distributed:
            return loss_fn
        wrapper = _LossModule(model, loss_fn)
        frozen = [f"model.{n}" for n, p in model.named_parameters() if not p.requires_grad]
        frozen += [f"model.{m}.{b}" if m else f"model.{b}" for m, module in model.named_modules() if not module.training
                   for b, _ in module.named_buffers(recurse=False)]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(wrapper, frozen)
        return DistributedDataParallel(wrapper, device_ids=[device] if device.type == "cuda" else None,
                                       static_graph=True)  # each phase uses one fixed set of parameters


class _LossModule(nn.Module):
    """A loss function over a model, as one module, so that DDP sees the model's forward pass."""

    def __init__(self, model: nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        return self.loss_fn(x, y)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``tailor`` with ``argv`` in ``nproc`` processes on this machine under torchrun; returns its exit code."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, not {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "tailorrt.cli", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                             str(max(1, (os.cpu_count() or 1) // nproc)))}
    return subprocess.run(cmd, env=env, check=False).returncode
