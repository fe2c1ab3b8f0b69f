"""NetTailor's architecture search: the bisection over k, the FLOPs cap, the fallback, output exclusion, the paired
comparison with the teacher that the rule reads and the verdict it records, and a search killed between candidates
resuming without training again what it had finished."""

import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from tailorrt.errors import ConfigError
from tailorrt.records import TaskRecord
from tailorrt.training.backbones import UniversalBackbone, get_spec
from tailorrt.training.datasets import TaskData
from tailorrt.training.methods.nettailor import ArchitectureSearch, NetTailor, NetTailorConfig
from tailorrt.training.methods.parts.selection import (
    Candidate,
    Plan,
    SearchRecord,
    Verdict,
    choose,
    eligible,
    monotone_fit,
    search,
)
from tailorrt.training.methods.parts.student import Student
from tailorrt.training.paired import Paired
from tailorrt.training.phases import PhaseConfig, Trainer, correct
from tailorrt.training.teacher import Teacher
from tests.conftest import task_record


def candidate(k: int, val: float, flops: int | None = None) -> Candidate:
    """A candidate at ``val`` % against a teacher that gets all 1000 validation images right."""
    lost = round((100.0 - val) * 10)
    return Candidate(k, 8 - k, 3, 100 - 10 * k if flops is None else flops, val - 5, val, 1.0, Paired(1000, 0, lost))


@pytest.mark.parametrize("passing", range(-1, 9))
def test_search_finds_the_largest_passing_k_in_few_fine_tunes(passing):
    ks = list(range(9))  # k = 0..8; candidates up to ``passing`` are within tolerance
    calls = []

    def evaluate(k):
        calls.append(k)
        return candidate(k, 99.0 if k <= passing else 90.0 - k)

    sel = search(ks, evaluate, 1.5, 0.0)  # the teacher at 100%: 99.0 passes, 90 - k does not
    assert len(calls) == len(set(calls)) <= math.ceil(math.log2(len(ks) + 1))
    assert sel.tried == calls
    if passing >= 0:
        assert sel.within_tolerance and sel.chosen.k == passing
    else:  # none within tolerance: the most accurate candidate tried (here the smallest k)
        assert not sel.within_tolerance and sel.chosen.k == 0 and 0 in calls


def test_fallback_prefers_the_leaner_of_equally_accurate_candidates():
    sel = search([1, 2, 3], lambda k: candidate(k, 90.0), 0.5, 0.0)
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
    torch.manual_seed(0)  # the same student each time, as a resumed run restores it from its checkpoint
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
        first.run(teacher_flops=flops_cap, student=Paired(48, 0, 0))
    (k,) = seen
    checkpoint = tmp_path / f"finetune-k{k}.safetensors"
    record = json.loads((tmp_path / f"prune-k{k}.json").read_text())
    stamp = checkpoint.stat().st_mtime_ns

    again, _ = _search(tmp_path, backbone, cfg)
    sel = again.run(teacher_flops=flops_cap, student=Paired(48, 0, 0))
    assert checkpoint.stat().st_mtime_ns == stamp  # read back, not trained again
    assert next(c for c in sel.candidates if c.k == k).to_json() == record
    assert sel.within_tolerance and sel.chosen.k == max(sel.tried)
    student, _ = again.restore(sel.chosen.k)
    assert student.accounting()["universal_blocks_kept"] == sel.chosen.universal_kept


def test_fixed_rule_trains_one_candidate(tmp_path, backbone):
    cfg = NetTailorConfig(proxy_threshold=0.0, universal_drop=1, finetune=PhaseConfig("finetune", 1, 0.01,
                                                                                          batch_size=16))
    s, _ = _search(tmp_path, backbone, cfg)
    sel = s.run(teacher_flops=10 ** 12, student=Paired(48, 0, 0))
    assert sel.tried == [1] and sel.chosen.universal_kept == len(backbone.blocks) - 1
    record = s.record(sel, teacher_flops=10 ** 12, student=Paired(48, 0, 0))
    meta = search_record(record.to_json(), len(backbone.blocks))
    # not "none within", whatever the candidate's difference to the teacher; the difference with its interval
    line = NetTailor().describe(meta)
    assert line.startswith(f"dropped 1/{len(backbone.blocks)} (--prune-universal), {sel.chosen.vs_teacher.words()} "
                           "vs teacher on val")
    assert line.endswith("(too few images for 0.5)") != record.resolved  # 48 images: they cannot tell 0.5
    assert NetTailor().verdict(meta) == f"architecture search: {record.words}"
    again = SearchRecord.from_json(json.loads(json.dumps(record.to_json())))  # as task.json holds it
    assert again.to_json() == record.to_json() and again.kept == sel.chosen


def search_record(prune: dict, blocks: int) -> TaskRecord:
    """A NetTailor task's record holding a search's ``metrics.prune`` (the rest of the record made up)."""
    return task_record(metrics={"universal_blocks_kept": blocks - prune["chosen"], "universal_blocks_total": blocks,
                                "prune": prune})


def test_monotone_fit_pools_what_rises_with_k():
    assert monotone_fit([0.0, -1.0, -2.0]) == [0.0, -1.0, -2.0]  # already falling: unchanged
    assert monotone_fit([-1.3, -0.2, -1.2, -0.9]) == pytest.approx([-0.75, -0.75, -1.05, -1.05])
    assert monotone_fit([-2.0, -1.0, 0.0]) == pytest.approx([-1.0, -1.0, -1.0])


def test_a_candidate_better_than_its_student_by_noise_does_not_pass_alone():
    """The student is 1.3 points under the teacher; k = 4 measures -0.2, but dropping blocks should not beat the
    unpruned student, so the two are pooled (-0.75) and nothing is within 0.5: the run says NetTailor fell short."""
    cands = {4: candidate(4, 99.8), 5: candidate(5, 98.8), 6: candidate(6, 99.1)}
    sel = search([4, 5, 6], cands.__getitem__, 0.5, -1.3)
    assert not sel.within_tolerance and sel.chosen.k == 4
    assert sel.fitted == pytest.approx({4: -0.75, 5: -1.2})  # bisection: k = 5 failed, then k = 4 (6 untried)
    fine = search([4, 5, 6], cands.__getitem__, 0.5, 0.0)  # the same candidates under a student at the teacher's
    assert fine.within_tolerance and fine.chosen.k == 4 and fine.fitted[4] == pytest.approx(-0.2)
    v = Verdict(0.5, sel.chosen.vs_teacher, Paired(1000, 0, 13), sel.within_tolerance, sel.fitted[4])
    assert v.words().startswith("NetTailor could not match the teacher here: no candidate within 0.5 points")
    assert "(-0.75 in the monotone fit)" in v.words() and "the student, before any block was dropped" in v.words()


def test_a_student_above_the_teacher_is_the_bar_pruning_may_not_spend():
    """The student measured 0.4 point above the teacher: a candidate 0.6 under the student (-0.2 vs the teacher)
    fails at a tolerance of 0.5, although it is within 0.5 of the teacher, and the verdict says why without calling
    it a shortfall; a student under the teacher leaves the teacher as the bar."""
    cands = {4: candidate(4, 99.8), 5: candidate(5, 99.2), 6: candidate(6, 98.8)}  # -0.2, -0.8, -1.2 vs teacher
    led = search([4, 5, 6], cands.__getitem__, 0.5, 0.4)  # student +0.4: bar +0.4, pass at >= -0.1
    assert led.within_tolerance is False and led.chosen.k == 4 and led.tried == [5, 4]
    level = search([4, 5, 6], cands.__getitem__, 0.5, -0.3)  # student under the teacher: the teacher is the bar
    assert level.within_tolerance and level.chosen.k == 4
    wide = search([4, 5, 6], cands.__getitem__, 1.5, 0.4)  # bar +0.4 - 1.5 = -1.1: k = 5 passes, k = 6 not
    assert wide.within_tolerance and wide.chosen.k == 5
    v = Verdict(0.5, led.chosen.vs_teacher, Paired(1000, 6, 2), led.fitted[4] >= -0.5, led.fitted[4],
                bar_met=led.within_tolerance)
    assert v.within_tolerance and not v.short  # within the teacher's tolerance: no shortfall for --method auto
    assert v.words().startswith("-0.20 ± ") and "could not match" not in v.words()
    assert "; no leaner candidate stayed within 0.5 points of the unpruned student, which measured +0.40" in v.words()
    record = SearchRecord("rule", False, 0.5, 0.0, 0.0, 1000, 100.0, 100, 4, led.candidates, led.fitted,
                          Paired(1000, 6, 2), v.within_tolerance, v.bar_met, v.resolved, v.short, v.words(), {})
    line = NetTailor().describe(search_record(record.to_json(), 8))  # tailor info's cell
    assert line.startswith("dropped 4/8 (2 tried, none within 0.5 of the student), -0.20 ± ")


def test_a_candidate_reads_back_from_its_record_with_the_fit_beside_it():
    cand = candidate(3, 99.2)
    assert Candidate.from_json({**cand.to_json(), "fitted": -0.5}) == cand  # as metrics.prune lists it
    assert Candidate.from_json(json.loads(json.dumps(cand.to_json()))) == cand  # as its phase's file holds it


def test_paired_difference_on_a_hand_example():
    mine = torch.tensor([True] * 6 + [False] * 4)  # A right on 0-5
    theirs = torch.tensor([True] * 4 + [False] * 2 + [True] * 2 + [False] * 2)  # B right on 0-3 and 6-7
    p = Paired.of(mine, theirs)
    assert (p.n, p.gained, p.lost) == (10, 2, 2)  # 4-5 only A, 6-7 only B
    assert p.diff == 0.0
    assert p.se == pytest.approx(100 * math.sqrt(4) / 10)  # sqrt(b + c - (b - c)^2 / n) / n
    low, high = p.interval()
    assert low == pytest.approx(-high) and high == pytest.approx(100 * 1.959964 * math.sqrt(5) / 12)
    assert Paired.from_json(p.to_json()) == p
    assert p.words() == f"+0.00 ± {p.half_width:.2f}"
    with pytest.raises(ValueError):
        Paired.of(mine, theirs[:5])


def test_paired_interval_never_collapses_and_narrows_with_images():
    agree = Paired(50, 0, 0)  # two models right on the same 50 images: not proof they are equal
    assert agree.half_width > 0 and agree.interval()[0] < 0 < agree.interval()[1]
    widths = [Paired(n, n // 40, n // 20).half_width for n in (400, 1600, 6400)]
    assert widths[0] > widths[1] > widths[2] and widths[0] / widths[2] == pytest.approx(4, rel=0.1)
    assert -Paired(1000, 10, 30).interval()[1] > 0  # 2 points lost on 1000 images: below zero beyond doubt


@pytest.mark.parametrize(("chosen", "student", "resolved", "short", "said"), [
    (Paired(6000, 100, 110), Paired(6000, 100, 110), True, False, None),  # -0.17 +- 0.47: within, resolved
    (Paired(1000, 30, 33), Paired(1000, 30, 33), False, False,
     "1,000 images cannot tell 0.5 points from noise, so this run cannot show that NetTailor matches the teacher"),
    (Paired(1000, 10, 40), Paired(1000, 5, 40), False, True, "the student, before any block was dropped"),
    (Paired(6000, 40, 180), Paired(6000, 100, 110), True, True, "the most accurate is"),
])
def test_verdict_says_what_the_split_could_tell(chosen, student, resolved, short, said):
    v = Verdict(0.5, chosen, student, chosen.diff >= -0.5, chosen.diff)
    assert (v.resolved, v.short) == (resolved, short)
    assert f"{chosen.words()} points vs the teacher on {chosen.n:,} validation images" in v.words()
    assert v.words().startswith("NetTailor could not match the teacher here") != v.within_tolerance
    if said:
        assert said in v.words()
    if short:
        assert v.words().endswith("short beyond the 95% interval")


def test_a_student_short_of_the_teacher_is_not_the_verdict_when_a_candidate_is_within_the_tolerance():
    student = Paired(6000, 50, 200)  # -2.5 beyond doubt, but fine-tuning brought the kept candidate back
    v = Verdict(0.5, Paired(6000, 100, 110), student, True, -0.17)
    assert not v.short and "could not match" not in v.words()


def test_the_rule_reads_the_paired_difference_on_the_teachers_images(tmp_path, backbone):
    cfg = NetTailorConfig(proxy_threshold=0.0, tolerance=0.5, finetune=PhaseConfig("finetune", 1, 0.01, batch_size=16))
    s, _ = _search(tmp_path, backbone, cfg)
    cand = s.evaluate(1)
    right = correct(s.restore(1)[0], s.data.val, torch.device("cpu"))
    assert cand.vs_teacher == Paired.of(right, s.teacher_right)
    assert cand.val_accuracy == pytest.approx(100 * float(right.float().mean()), abs=1e-3)
    assert choose([cand], 0.5, 0.0).within_tolerance == (cand.vs_teacher.diff >= -0.5)


def test_a_candidate_recorded_before_the_paired_comparison_is_measured_again(tmp_path, backbone):
    cfg = NetTailorConfig(proxy_threshold=0.0, finetune=PhaseConfig("finetune", 1, 0.01, batch_size=16))
    s, _ = _search(tmp_path, backbone, cfg)
    first = s.evaluate(2)
    old = first.to_json()
    del old["vs_teacher"]
    (tmp_path / "prune-k2.json").write_text(json.dumps(old))
    stamp = (tmp_path / "finetune-k2.safetensors").stat().st_mtime_ns
    again, _ = _search(tmp_path, backbone, cfg)
    assert again.evaluate(2) == first  # its fine-tune restored, not run again, and compared image by image
    assert (tmp_path / "finetune-k2.safetensors").stat().st_mtime_ns == stamp
    assert "vs_teacher" in json.loads((tmp_path / "prune-k2.json").read_text())


def test_no_nettailor_phase_may_choose_its_epoch_on_the_selection_split():
    with pytest.raises(ConfigError, match="patience"):
        NetTailorConfig(teacher=PhaseConfig("teacher", 3, 0.01, patience=1))
