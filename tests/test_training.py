import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from tailorrt.errors import ConfigError, TrainingDivergedError
from tailorrt.training.phases import PhaseConfig, Trainer


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


@pytest.mark.parametrize("policy", ["crop", "crop-flip"])
def test_augmentation_translates_by_reflection_and_flips_only_where_asked(policy):
    from tailorrt.training.augment import augment

    x = torch.randn(32, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    out = augment(x, policy, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")  # 16 px: shifted by up to 16 / 8 pixels each way
    flipped = shifted = 0
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 16, dx:dx + 16] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(w, out[i]) for w in windows)
        mirror = any(torch.equal(w.flip(-1), out[i]) for w in windows)
        assert plain or mirror
        flipped += mirror and not plain
        shifted += not torch.equal(out[i], x[i]) and not torch.equal(out[i], x[i].flip(-1))
    assert shifted > 16 and (flipped > 4 if policy == "crop-flip" else flipped == 0)
    assert augment(x, "none") is x


def test_nettailor_refuses_an_unknown_augmentation():
    from tailorrt.training.methods.nettailor import NetTailorConfig

    with pytest.raises(ConfigError, match="crop-flip"):
        NetTailorConfig(augment="rotate")


def test_a_small_training_set_gets_the_epochs_min_steps_asks_for(tmp_path):
    data = _data()  # 64 items at batch 16: 4 steps an epoch
    phase = PhaseConfig("p", epochs=1, lr=0.1, batch_size=16, min_steps=10)
    assert phase.for_steps(4).epochs == 3 and phase.for_steps(10).epochs == 1  # ceil(10 / 4); enough already
    assert PhaseConfig("q", epochs=2, lr=0.1).for_steps(1).epochs == 2  # min_steps 0: unchanged
    m = _model()
    steps = {"n": 0}
    loss = _loss(m)

    def counted(x, y):
        steps["n"] += 1
        return loss(x, y)

    result = Trainer(device=torch.device("cpu"), work_dir=tmp_path).run(phase, m, counted, data, data)
    assert result.epochs == 3 and steps["n"] == 12


def test_epochs_given_run_exactly_and_a_shorter_schedule_scales_the_minimum():
    from tailorrt.training.methods.base import configure, get, shorter

    nettailor = get("nettailor")
    assert configure(nettailor, False, {}).student.min_steps == 11200  # real data's default floor
    assert configure(nettailor, False, {"student-epochs": 2}).student.min_steps == 0  # the user's epochs hold
    both = configure(nettailor, False, {"student-epochs": 2, "student-min-steps": 100}).student
    assert (both.epochs, both.min_steps) == (2, 100)
    assert configure(nettailor, False, {"teacher-epochs": 2}).student.min_steps == 11200  # only that phase
    assert shorter(configure(nettailor, False, {}), 1 / 3).student.min_steps == round(11200 / 3)
    with pytest.raises(ConfigError, match="min_steps must be >= 0"):
        configure(nettailor, False, {"student-min-steps": -1})
    ft = configure(nettailor, False, {"finetune-epochs": 3, "finetune-min-steps": 200}).finetune
    assert (ft.epochs, ft.min_steps) == (3, 200)
    assert configure(nettailor, False, {}).finetune.min_steps == 2800
    assert configure(nettailor, False, {"finetune-epochs": 3}).finetune.min_steps == 0
    assert configure(nettailor, True, {}).finetune.min_steps == 0  # the built-in tasks' schedule is unchanged


def test_a_phase_that_selects_nothing_validates_about_ten_times_and_at_its_end(tmp_path):
    data = _data()
    assert [e for e in range(25) if PhaseConfig("p", 25, 0.1).validates_after(e)] == [2, 5, 8, 11, 14, 17, 20, 23,
                                                                                       24]
    assert all(PhaseConfig("p", 25, 0.1, patience=3).validates_after(e) for e in range(25))  # it chooses on each
    m = _model()
    phase = PhaseConfig("p", epochs=12, lr=0.1, batch_size=16)
    result = Trainer(device=torch.device("cpu"), work_dir=tmp_path).run(phase, m, _loss(m), data, data)
    measured = [r["epoch"] for r in result.history if r["val_accuracy"] is not None]
    assert measured == [2, 4, 6, 8, 10, 12] and result.val_accuracy == result.history[-1]["val_accuracy"]
    again = _model()  # a finished phase resumes from a history with gaps
    assert Trainer(device=torch.device("cpu"), work_dir=tmp_path).run(
        phase, again, _loss(again, fail_at=1), data, data).val_accuracy == result.val_accuracy
