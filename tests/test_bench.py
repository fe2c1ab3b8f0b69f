"""``tailor bench``: the per-task models it times are the real teachers, every figure is there, and the scaling
run loads 1..K tasks in fresh processes and draws its plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tailorrt.export.speed import paired_ratio
from tailorrt.pack import ModelDir
from tailorrt.tools.bench import per_task_model, teacher_checkpoint
from tailorrt.training.packs import TrainingDir
from tailorrt.training.teacher import Teacher
from tests.conftest import one_line_error, run_cli, run_clis

FAST = ("--rounds", "2", "--requests", "24", "--clients", "4", "--batches", "1,4", "--threads", "1")


@pytest.fixture(scope="module")
def bench_dir(exported_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "m"
    shutil.copytree(exported_dir, root)
    return root


def test_the_per_task_model_is_the_tasks_teacher(bench_dir, tmp_path):
    mdir = TrainingDir(bench_dir)
    backbone, _ = mdir.load_backbone()
    task = mdir.task_names()[0]
    state = teacher_checkpoint(mdir, task)
    assert state is not None  # tailor train left the finished teacher phase in .work
    teacher = Teacher(backbone, len(mdir.task_record(task).classes))
    teacher.load_state_dict(state)
    model = per_task_model(mdir, task, backbone, tmp_path)
    assert model.kind == "teacher" and model.flops > mdir.task_record(task).metrics.flops * 0.5
    size = backbone.spec.input_size
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        ref = teacher.eval()(x).numpy()
    got = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"]).run(["logits"],
                                                                                       {"input": x.numpy()})[0]
    assert np.abs(got - ref).max() < 1e-4


def test_a_speedup_is_the_median_of_the_rounds_ratios():
    # per-round ratios 3, 2 and 1
    res = {"fast": {"ms_rounds": [1.0, 2.0, 4.0]}, "slow": {"ms_rounds": [3.0, 4.0, 4.0]}}
    assert paired_ratio(res, "fast", "slow") == {"median": 2.0, "q1": 1.5, "q3": 2.5}
    with pytest.raises(ValueError):
        paired_ratio({"fast": {"ms_rounds": [1.0]}, "slow": {"ms_rounds": [1.0, 2.0]}}, "fast", "slow")


def test_bench_reports_every_figure(bench_dir):
    proc = run_cli("bench", "--model-dir", str(bench_dir), *FAST, "--precision", "int8", check=True, timeout=600)
    r = json.loads((bench_dir / "bench" / "bench.json").read_text())
    assert set(r["tasks"]) == {"colors", "hues"}
    for row in r["tasks"].values():
        assert row["per_task_model"] == "teacher" and row["flop_ratio"] > 0
        for b in ("1", "4"):
            m = row["batches"][b]
            assert m["tailorrt"]["images_per_s"] > 0 and m["per_task"]["images_per_s"] > 0
            assert m["tailorrt"]["ms_min"] <= m["tailorrt"]["ms_per_batch"] <= m["tailorrt"]["ms_max"]
            assert 0 < m["fraction_of_limit"] and m["speedup"] > 0
            assert m["tailorrt_fused"]["images_per_s"] > 0 and m["fused_speedup_over_flop_ratio"] > 0
            # int8 timed in the same rounds, as a ratio to the fp32 Runtime; each ratio is the median of the
            # rounds' ratios, between its quartiles
            assert m["low_precision_vs_tailorrt"] == paired_ratio(m, "tailorrt_low", "tailorrt")["median"]
            assert m["speedup"] == paired_ratio(m, "tailorrt", "per_task")["median"]
            q1, q3 = m["speedup_over_flop_ratio_quartiles"]
            assert q1 <= m["speedup_over_flop_ratio"] <= q3
        assert 0 <= row["low_precision_accuracy"]["accuracy"] <= 100
        prof = row["profile"]
        assert prof["batch"] == 1
        # sharing keeps each task's batch norms apart from the shared convs: more nodes than the folded graph
        assert sum(prof["tailorrt"]["nodes"].values()) > sum(prof["tailorrt_fused"]["nodes"].values())
        assert prof["per_task"]["kernel_us"]["Conv"] > 0 and prof["tailorrt"]["call_us"] > 0
    assert r["limit"]["best_gmacs_per_s"] > 0
    for k in ("tailorrt", "per_task"):
        assert r["load"][k]["rss_added"] > 0 and r["load"][k]["load_seconds"] > 0 and r["disk_bytes"][k] > 0
        s = r["stream"][k]
        assert s["mixed"]["requests"] == 24 and s["mixed"]["p50_ms"] <= s["mixed"]["p99_ms"]
        assert set(s["single"]) == {"colors", "hues"} and s["mixed_over_single"] > 0
    assert r["versions"]["onnxruntime"] and r["machine"]["cpus"] and r["threads"] == 1
    from tailorrt.cpu import cpu_summary
    assert r["machine"]["cpu"] == cpu_summary() and f"({cpu_summary()}), " in proc.stdout  # figures name the ISA
    assert "| tailorrt, one Runtime |" in proc.stdout and "mixed / single" in proc.stdout
    assert "Where the time goes at batch 1" in proc.stdout
    assert r["precision"]["precision"] == "int8" and "int8 / fp32" in proc.stdout
    assert (bench_dir / "bench" / "bench.md").read_text() == r["summary"]


def test_scaling_loads_copies_and_draws_the_plot(bench_dir):
    out = bench_dir / "scale" / "s.json"
    proc = run_cli("bench", "--model-dir", str(bench_dir), "--scaling", "1,3", "--threads", "1", "--out", str(out),
                   check=True, timeout=600)
    r = json.loads(out.read_text())
    rows = r["rows"]
    assert [row["tasks"] for row in rows] == [1, 3]
    packs = ModelDir(bench_dir / "bench" / "scaling").task_names()
    assert len(packs) == 3 and "colors-copy1" in packs  # the third task is a copy of the first, renamed
    assert rows[0]["ideal_bytes"] < rows[1]["ideal_bytes"]
    assert all(row["tailorrt_rss"] > 0 and row["per_task_rss"] > 0 for row in rows)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fixed overhead" in proc.stdout


def test_bench_bad_input_is_one_line(bench_dir, tmp_path):
    empty, scaling = run_clis(("bench", "--model-dir", str(tmp_path / "empty"), *FAST),
                              ("bench", "--model-dir", str(bench_dir), "--scaling", "0,2"))
    assert "no tasks" in one_line_error(empty)
    assert "scaling" in one_line_error(scaling)
