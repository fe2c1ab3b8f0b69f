"""NetTailor's architecture search: the bisection over k, the FLOPs cap, the fallback, output exclusion, and a search
killed between candidates resuming without training again what it had finished."""

import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from tailorrt.training.backbones import UniversalBackbone, get_spec
from tailorrt.training.datasets import TaskData
from tailorrt.training.methods.nettailor import ArchitectureSearch, NetTailor, NetTailorConfig
from tailorrt.training.methods.selection import Candidate, Plan, eligible, search
from tailorrt.training.methods.student import Student
from tailorrt.training.teacher import Teacher
from tailorrt.training.trainer import PhaseConfig, Trainer


def candidate(k: int, val: float, flops: int | None = None) -> Candidate:
    return Candidate(k, 8 - k, 3, 100 - 10 * k if flops is None else flops, val - 5, val, 1.0)


@pytest.mark.parametrize("passing", range(-1, 9))
def test_search_finds_the_largest_passing_k_in_few_fine_tunes(passing):
    ks = list(range(9))  # k = 0..8; candidates up to ``passing`` are within tolerance
    calls = []

    def evaluate(k):
        calls.append(k)
        return candidate(k, 99.0 if k <= passing else 90.0 - k)

    sel = search(ks, evaluate, lambda c: c.val_accuracy >= 98.5)
    assert len(calls) == len(set(calls)) <= math.ceil(math.log2(len(ks) + 1))
    assert sel.tried == calls
    if passing >= 0:
        assert sel.within_tolerance and sel.chosen.k == passing
    else:  # none within tolerance: the most accurate candidate tried (here the smallest k)
        assert not sel.within_tolerance and sel.chosen.k == 0 and 0 in calls


def test_fallback_prefers_the_leaner_of_equally_accurate_candidates():
    sel = search([1, 2, 3], lambda k: candidate(k, 90.0), lambda c: False)
    assert not sel.within_tolerance
    assert sel.chosen.k == max(sel.tried)


def test_eligible_respects_connectivity_and_the_flops_cap():
    plans = [Plan(0, True, 120, 8, 5), Plan(1, True, 100, 7, 5), Plan(2, True, 80, 6, 4), Plan(3, False, 60, 5, 4)]
    assert eligible(plans, 100) == [1, 2]
    assert eligible(plans, 130) == [0, 1, 2]


@pytest.fixture()
def backbone():
    torch.manual_seed(0)
    return UniversalBackbone(get_spec("tiny")).eval()


def test_output_exclusion_drops_a_layer_nobody_reads(backbone):
    s = Student(backbone, 4, max_skip=3)
    with torch.no_grad():  # the last layer reads u_2 through its universal block and first proxy: drop both
        s.layers[2].keep[0] = False
        s.layers[2].keep[1] = False
    assert s.settle()
    assert not s.layers[1].keep.any()  # layer 2's output (u_2) has no reader left: its blocks go
    assert s.layers[0].keep[0] and s.layers[2].keep[2]  # u_1 is still read by the last layer's second proxy
    flops = s.accounting()["flops"]
    assert flops < Student(backbone, 4).accounting()["flops"]
    assert s(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_relative_proxy_rule_keeps_only_strong_proxies(backbone):
    s = Student(backbone, 4, max_skip=3)
    with torch.no_grad():
        s.layers[2].alpha_params.copy_(torch.tensor([3.0, 1.0, -0.5, 0.9]))
    a = s.layers[2].alphas()
    s.mark(proxy_threshold=0.0, proxy_relative=0.5)
    keep = s.layers[2].keep.tolist()
    assert keep == [True, True, bool(a[2] >= 0.5 * a[1]), bool(a[3] >= 0.5 * a[1])] == [True, True, False, True]


def _tiny_task(classes: int = 3) -> TaskData:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(48) % classes
    x = torch.randn(48, 3, 16, 16, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float()
    ds = TensorDataset(x, y)
    return TaskData("tiny", [f"c{i}" for i in range(classes)], ds, ds, ds, "test")


def _search(tmp_path, backbone, cfg):
    data = _tiny_task()
    student = Student(backbone, 3, max_skip=cfg.max_skip)
    with torch.no_grad():  # attention already trained: a clear order of the universal blocks
        for l, layer in enumerate(student.layers):
            layer.alpha_params[0] = 1.0 + l
    teacher = Teacher(backbone, 3).eval()
    trainer = Trainer(device=torch.device("cpu"), work_dir=tmp_path)
    return ArchitectureSearch(cfg, backbone, 3, student.state_dict(), teacher, data, trainer), trainer


def test_search_resumes_after_a_kill_between_candidates(tmp_path, backbone):
    cfg = NetTailorConfig(proxy_threshold=0.0, tolerance=100.0,  # every candidate within tolerance
                          finetune=PhaseConfig("finetune", 1, 0.01, batch_size=16))
    first, _ = _search(tmp_path, backbone, cfg)
    real = first.evaluate
    seen = []

    def killed_after_one(k):
        if seen:
            raise KeyboardInterrupt
        seen.append(k)
        return real(k)

    first.evaluate = killed_after_one
    flops_cap = 10 ** 12
    with pytest.raises(KeyboardInterrupt):
        first.run(teacher_val=100.0, teacher_flops=flops_cap)
    (k,) = seen
    checkpoint = tmp_path / f"finetune-k{k}.safetensors"
    record = json.loads((tmp_path / f"prune-k{k}.json").read_text())
    stamp = checkpoint.stat().st_mtime_ns

    again, _ = _search(tmp_path, backbone, cfg)
    sel = again.run(teacher_val=100.0, teacher_flops=flops_cap)
    assert checkpoint.stat().st_mtime_ns == stamp  # read back, not trained again
    assert next(c for c in sel.candidates if c.k == k).to_json() == record
    assert sel.within_tolerance and sel.chosen.k == max(sel.tried)
    student, _ = again.restore(sel.chosen.k)
    assert student.accounting()["universal_blocks_kept"] == sel.chosen.universal_kept


def test_fixed_rule_trains_one_candidate(tmp_path, backbone):
    cfg = NetTailorConfig(proxy_threshold=0.0, universal_drop=1, finetune=PhaseConfig("finetune", 1, 0.01,
                                                                                          batch_size=16))
    s, _ = _search(tmp_path, backbone, cfg)
    sel = s.run(teacher_val=0.0, teacher_flops=10 ** 12)
    assert sel.tried == [1] and sel.chosen.universal_kept == len(backbone.blocks) - 1
    meta = {"metrics": {"universal_blocks_total": len(backbone.blocks),
                        "prune": s.record(sel, teacher_val=100.0, teacher_flops=10 ** 12)}}
    assert NetTailor().describe(meta) == f"dropped 1/{len(backbone.blocks)} (--prune-universal)"  # not "none within"
