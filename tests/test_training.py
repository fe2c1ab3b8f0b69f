import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from tailorrt.errors import TrainingDivergedError
from tailorrt.training.trainer import PhaseConfig, Trainer


def _data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


def _loss(model, fail_at=None):
    calls = {"n": 0}

    def fn(x, y):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    return fn


def test_interrupted_phase_resumes_to_identical_weights(tmp_path):
    data = _data()
    phase = PhaseConfig("p", epochs=3, lr=0.1, batch_size=16)
    ref = _model()
    full = Trainer(device=torch.device("cpu"), work_dir=tmp_path / "a").run(phase, ref, _loss(ref), data, data)

    m = _model()
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 2 (4 steps per epoch)
        Trainer(device=torch.device("cpu"), work_dir=tmp_path / "b").run(phase, m, _loss(m, fail_at=6), data, data)
    assert (tmp_path / "b" / "p.safetensors").is_file()
    resumed_model = _model()
    resumed = Trainer(device=torch.device("cpu"), work_dir=tmp_path / "b").run(
        phase, resumed_model, _loss(resumed_model), data, data)
    assert resumed.history == full.history
    for a, b in zip(ref.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_finished_phase_is_not_rerun(tmp_path):
    data = _data()
    phase = PhaseConfig("p", epochs=1, lr=0.1, batch_size=16)
    m = _model()
    Trainer(device=torch.device("cpu"), work_dir=tmp_path).run(phase, m, _loss(m), data, data)
    again = _model()
    result = Trainer(device=torch.device("cpu"), work_dir=tmp_path).run(
        phase, again, _loss(again, fail_at=1), data, data)  # would raise if it trained
    assert result.epochs == 1
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), again.state_dict().values()))


def test_diverging_loss_is_reported():
    data = _data()
    m = _model()

    def nan_loss(x, y):
        logits = m(x)
        return logits.sum() * float("nan"), logits

    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        Trainer(device=torch.device("cpu")).run(PhaseConfig("p", 1, 0.1, batch_size=16), m, nan_loss, data, data)


def test_special_parameters_can_be_clipped_on_their_own():
    """NetTailor's attention logits: unclipped (or clipped on their own) while the rest keeps the phase's clip."""
    data = _data()
    moved = {}
    for mode in ("joint", None):
        torch.manual_seed(0)
        m = _model()
        gate = nn.Parameter(torch.zeros(()))

        def loss(x, y, m=m, gate=gate):
            logits = m(x)
            return F.cross_entropy(logits, y) + 1e4 * gate, logits  # the gate's gradient is 1e4 at every step

        phase = PhaseConfig("p", 1, 0.1, momentum=0.0, weight_decay=0.0, batch_size=64, grad_clip=1.0)
        m.register_parameter("gate", gate)
        Trainer(device=torch.device("cpu")).run(phase, m, loss, data, data, special=[gate], special_clip=mode)
        moved[mode] = abs(float(gate.detach()))
    # one step (64 images, batch 64) at the first learning rate of the cosine schedule
    assert moved["joint"] <= 0.1 * 1.0 + 1e-6  # clipped with the rest: the whole step's norm is at most 1
    assert moved[None] == pytest.approx(0.1 * 1e4, rel=1e-3)  # on its own and unclipped: the full step
