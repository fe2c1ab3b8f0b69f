"""``tailor report``: a page that opens from disk with every task's pictures, architecture pictures that follow
the weights (pruned blocks absent), and, where a headless browser is installed, the page as a picture."""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from tailorrt.pack import ModelDir
from tailorrt.records import TaskRecord
from tailorrt.tools.render import check_rendering, find_browser, image_difference
from tailorrt.tools.report import architecture_plot, attention_plot
from tailorrt.training.methods.parts.pictures import attention_history
from tailorrt.training.paired import Paired
from tests.conftest import one_line_error, run_cli, task_record

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report_dir(exported_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "r"
    proc = run_cli("report", "--model-dir", str(exported_dir), "--out", str(out), check=True)
    assert str(out / "index.html") in proc.stdout
    return out


def test_the_page_has_every_tasks_pictures_and_opens_from_disk(report_dir, exported_dir):
    page = (report_dir / "index.html").read_text()
    tasks = ModelDir(exported_dir).task_names()
    sources = re.findall(r"<img src='([^']+)'", page)
    for task in tasks:
        assert f"<section id='{task}'>" in page
        for kind in ("architecture", "attention", "selection", "tradeoff"):  # NetTailor: alphas and candidates
            assert f"{task}-{kind}.png" in sources
    for src in sources:  # every picture is a file next to the page: no server, no network
        assert "/" not in src and (report_dir / src).read_bytes()[:8] == PNG
    assert "<script" not in page and "http" not in page
    info = page[page.index("<table>"):page.index("</table>")]
    assert "<th>task params</th>" in info and info.count("<tr>") == len(tasks) + 1  # tailor info's table
    for task in tasks:  # the search's table: every candidate against the teacher, with its 95% interval
        prune = ModelDir(exported_dir).task_record(task).raw["metrics"].get("prune")
        if prune and "candidates" in prune:
            section = page[page.index(f"<section id='{task}'>"):]
            for c in prune["candidates"]:
                assert f"<td>{Paired.from_json(c['vs_teacher']).bracketed()}</td>" in section


def test_architecture_follows_the_weights_and_pruned_blocks_are_absent(exported_dir, tmp_path):
    mdir = ModelDir(exported_dir)
    rec = mdir.task_record(mdir.task_names()[0])
    at = next(i for i, l in enumerate(rec.raw["architecture"]) if len(l["blocks"]) > 1)

    def variant(change) -> TaskRecord:
        m = copy.deepcopy(rec.raw)
        change(m["architecture"][at]["blocks"])
        return dataclasses.replace(rec, raw=m)

    def kept(alpha):
        return lambda blocks: blocks[1].update(kept=True, alpha=alpha)

    metas = {"strong": variant(kept(0.9)), "faint": variant(kept(0.2)),
             "pruned": variant(lambda blocks: blocks[1].update(kept=False, alpha=0.9)),
             "removed": variant(lambda blocks: blocks.pop(1))}
    pics = {name: architecture_plot(m, tmp_path / f"{name}.png") for name, m in metas.items()}
    assert image_difference(pics["pruned"], pics["removed"]) == 0  # a pruned block is not drawn at all
    assert image_difference(pics["strong"], pics["pruned"]) > 0
    assert image_difference(pics["strong"], pics["faint"]) > 0  # opacity follows the attention weight


def test_other_methods_draw_units_and_attention_scales(tmp_path):
    scales = [{"unit": u, "mean": 1.0 - 0.1 * u, "low": 0.0, "n": 8} for u in range(4)]
    fields = {"method": "attention", "metrics": {"units_used": 4, "units_owned": [3]},  # over made-up figures
              "attention": {"method": "attention", "granularity": "channel", "penalty": "l1", "steps": [],
                            "pruning": None, "scales": scales},
              "training": {"phases": [{"name": "tune", "seconds": 1.0,
                                       "history": [{"attention": scales}, {"attention": scales[::-1]}]}]}}
    meta = task_record(**fields)
    labels, rows = attention_history(meta)
    assert labels == ["unit 0", "unit 1", "unit 2", "unit 3"] and rows == [[1.0, 0.9, 0.8, 0.7]] * 2
    assert architecture_plot(meta, tmp_path / "a.png").read_bytes()[:8] == PNG
    assert attention_plot(meta, tmp_path / "b.png").read_bytes()[:8] == PNG
    plain = task_record(**{**fields, "method": "linear", "attention": None,
                           "training": {"phases": [{"name": "tune", "seconds": 1.0, "history": [{"loss": 1}]}]}})
    assert attention_plot(plain, tmp_path / "c.png") is None and not (tmp_path / "c.png").exists()
    assert image_difference(architecture_plot(plain, tmp_path / "d.png"), tmp_path / "a.png") > 0


@pytest.mark.skipif(find_browser() is None, reason="no headless Chromium on PATH (Debian: apt-get install chromium)")
def test_the_report_renders_in_a_headless_browser(report_dir, tmp_path):
    result = check_rendering(report_dir, tmp_path / "shot.png")
    assert result["figures_drawn"], result


def test_report_bad_input_is_one_line(tmp_path):
    assert "no tasks" in one_line_error(run_cli("report", "--model-dir", str(tmp_path / "empty")))
    shutil.rmtree(tmp_path, ignore_errors=True)
