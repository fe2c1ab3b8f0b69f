"""``tailor train --nproc 2``: DDP over the task's trainable parts on CPU (gloo), rank 0 writing; a kill and
``--resume`` finish the run from its checkpoint; the frozen backbone takes no part in the all-reduce."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist

from tests.conftest import TAILOR, make_imagefolder, run_cli

LINEAR = ("--backbone", "tiny", "--random-init", "--method", "linear", "--batch-size", "8")


def test_ddp_wraps_only_the_trainable_parts_and_leaves_the_backbone(tmp_path):
    """The DDP module manages the task's parameters alone, and training steps leave every backbone tensor
    (weights and batch-norm statistics) as it was."""
    from tailorrt.training.backbones import build_backbone
    from tailorrt.training.distributed import Cluster
    from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec
    from tailorrt.training.train import fingerprint

    backbone, _ = build_backbone("tiny", pretrained=False)
    net = TunedNet(backbone, 3, TuneSpec(units=(3,), bn="frozen"))
    before = fingerprint(backbone)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net.train()
        step = Cluster(rank=0, world_size=2).wrap(net, lambda x, y: (torch.nn.functional.cross_entropy(
            net(x), y), None), torch.device("cpu"))
        managed = {id(p) for p in step._module_parameters}
        trainable = {id(p) for p in net.parameters() if p.requires_grad}
        assert managed == trainable and trainable
        assert not managed & {id(p) for p in backbone.parameters()}
        assert any(name.startswith("model.units.0.") for name in step.parameters_to_ignore)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            loss, _ = step(torch.randn(4, 3, 20, 20), torch.tensor([0, 1, 2, 0]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        dist.destroy_process_group()
    assert fingerprint(backbone) == before


def _checkpoint_epoch(path: Path) -> int:
    from tailorrt.errors import TailorError
    from tailorrt.training.io import load_metadata

    try:
        return int(load_metadata(path)["epoch"])
    except (TailorError, OSError, KeyError):  # not written yet
        return 0


def test_nproc_2_trains_a_loadable_pack_and_resumes_after_a_kill(tmp_path):
    data = make_imagefolder(tmp_path / "colors", classes=3, per_class=120)
    task = f"imagefolder:{data}"
    single = tmp_path / "single"  # the single-process run to compare with, beside the one that gets killed
    alone = subprocess.Popen([str(TAILOR), "train", "--task", task, "--model-dir", str(single), *LINEAR,
                              "--head-epochs", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})

    models = tmp_path / "ddp"
    args = ["train", "--task", task, "--model-dir", str(models), *LINEAR, "--head-epochs", "6", "--nproc", "2"]
    ckpt = models / ".work" / "colors--linear" / "head.safetensors"
    proc = subprocess.Popen([str(TAILOR), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while _checkpoint_epoch(ckpt) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) >= 4, tree  # tailor, torchrun and the two training processes (which have sessions of their own)
    for p in tree:  # all at once, as when the machine goes down
        p.send_signal(signal.SIGKILL)
    _out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    killed_at = _checkpoint_epoch(ckpt)
    assert 1 <= killed_at < 6
    assert not (models / "tasks" / "colors--linear").exists()

    # mark the checkpoint, so that the finished pack shows whether the run went on from it or started again
    from tailorrt.training.io import load_metadata, load_tensors, save_tensors

    meta = load_metadata(ckpt)
    history = json.loads(meta["history"])
    history[0]["loss"] = 12345.0
    save_tensors(ckpt, load_tensors(ckpt), {**meta, "history": json.dumps(history)})

    assert alone.wait(timeout=240) == 0, alone.stderr.read()
    proc = run_cli(*args, "--resume", check=True)
    assert proc.stdout.count("wrote") == 1, proc.stdout  # rank 0 alone reports (and writes)
    record = json.loads((models / "tasks" / "colors--linear" / "task.json").read_text())
    phase = record["training"]["phases"][0]
    assert phase["epochs"] >= killed_at and phase["history"][0]["loss"] == 12345.0
    assert record["distributed"] == {"processes": 2}

    from tailorrt.runtime import Runtime

    rt = Runtime(models, backend="torch")  # the pack loads, as a single-process one does
    assert rt.tasks == ["colors--linear"]
    reference = json.loads((single / "tasks" / "colors--linear" / "task.json").read_text())["metrics"]["accuracy"]
    assert abs(record["metrics"]["accuracy"] - reference) <= 10, (record["metrics"]["accuracy"], reference)
    assert sorted(p.name for p in (models / "tasks" / "colors--linear").iterdir()) == \
        sorted(p.name for p in (single / "tasks" / "colors--linear").iterdir())


@pytest.mark.parametrize("argv, want", [(["train", "--nproc", "2", "--task", "x"], ["train", "--task", "x"]),
                                        (["train", "--nproc=3", "--resume"], ["train", "--resume"])])
def test_the_relaunched_command_drops_nproc(argv, want):
    from tailorrt.cli.common import without_option

    assert without_option(argv, "--nproc") == want
