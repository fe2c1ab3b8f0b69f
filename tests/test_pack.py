import dataclasses

import pytest
import torch

from tailorrt.errors import BackboneMismatchError, IntegrityError, PackError
from tailorrt.integrity import SEAL_KEY
from tailorrt.records import AutoChoice, Metrics, TaskDraft
from tailorrt.training.backbones import BackboneSource, UniversalBackbone, get_spec
from tailorrt.training.datasets import Preprocess
from tailorrt.training.methods.parts.student import Student
from tailorrt.training.packs import TrainingDir as ModelDir
from tests.conftest import one_line_error, reseal, run_cli


def _student(backbone):
    return Student(backbone, 3).eval()


def _meta(sha, **fields) -> TaskDraft:
    return TaskDraft("nettailor", sha, ("a", "b", "c"), Preprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                     **fields, extra={"config": {"max_skip": 3}})


@pytest.fixture()
def packed(tmp_path):
    """A model dir holding a tiny backbone and one task pack ``t``: (ModelDir, backbone, sha, student)."""
    bb = UniversalBackbone(get_spec("tiny")).eval()
    md = ModelDir(tmp_path)
    sha = md.write_backbone(bb, BackboneSource("random"))
    s = _student(bb)
    md.write_task("t", s.task_state(), _meta(sha))
    return md, bb, sha, s


def test_backbone_written_once_and_other_backbone_refused(tmp_path):
    torch.manual_seed(0)
    bb = UniversalBackbone(get_spec("tiny"))
    md = ModelDir(tmp_path)
    sha = md.write_backbone(bb, BackboneSource("random"))
    mtime = (md.backbone_dir / "backbone.safetensors").stat().st_mtime_ns
    assert md.write_backbone(bb, BackboneSource("random")) == sha
    assert (md.backbone_dir / "backbone.safetensors").stat().st_mtime_ns == mtime
    other = UniversalBackbone(get_spec("tiny"))
    with pytest.raises(BackboneMismatchError, match="use another --model-dir"):
        md.write_backbone(other, BackboneSource("random"))


def test_pack_roundtrip_and_mismatch(packed):
    md, bb, sha, s = packed
    loaded, rec = md.load_model("t", bb, sha)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), s(x))
    assert rec.raw["format_version"] == 1 and rec.pack.name == "task.safetensors" and rec.pack.bytes > 0
    with pytest.raises(BackboneMismatchError, match="retrain the task"):
        md.read_task("t", "0" * 64)
    with pytest.raises(PackError, match="no task 'nope'"):
        md.task_record("nope")
    with pytest.raises(PackError, match="invalid task name"):
        md.write_task("Bad Name", {}, _meta(sha))


def test_future_format_version_refused(packed):
    md = packed[0]
    reseal(md.tasks_dir / "t" / "task.json", format_version=99)
    with pytest.raises(PackError, match="format_version 99"):
        md.task_record("t")


def test_failed_write_keeps_previous_pack_and_leaves_no_partial(packed, tmp_path, monkeypatch):
    md, _, sha, s = packed
    before = (md.tasks_dir / "t" / "task.safetensors").read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("tailorrt.training.packs.write_record", crash)
    with pytest.raises(KeyboardInterrupt):
        md.write_task("t", s.task_state(), _meta(sha, data_spec="new"))
    with pytest.raises(KeyboardInterrupt):
        md.write_task("u", s.task_state(), _meta(sha))
    assert (md.tasks_dir / "t" / "task.safetensors").read_bytes() == before
    assert sorted(p.name for p in md.tasks_dir.iterdir()) == ["t"]
    assert not list((tmp_path / ".work").glob("pack-*"))


def test_corrupt_task_weights_are_a_clear_error(packed):
    md, bb, sha, _ = packed
    f = md.tasks_dir / "t" / "task.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(IntegrityError, match="task.safetensors does not match the sha256 recorded in"):
        md.load_model("t", bb, sha)


_METRICS = {"accuracy": 90.0, "teacher_accuracy": None, "flops": 10, "teacher_flops": 20, "task_params": 5,
            "shared_params_used": 7, "universal_blocks_kept": 1, "universal_blocks_total": 2}


_CANDIDATE = {"method": "linear", "val_accuracy": 90.0, "test_accuracy": 89.5, "pack_bytes": 100, "flops": 10,
              "seconds": 1.5, "misses": []}
_AUTO = {"candidates": [_CANDIDATE, {**_CANDIDATE, "method": "flex", "misses": ["x"]}], "winner": "linear",
         "reason": "r", "schedule_fraction": 0.25, "search_seconds": 3.0, "final_seconds": 6.0, "total_seconds": 9.0,
         "budget": {"max_pack_mb": None, "max_mflops": 5.0, "max_drop": 1.0}, "best_val_accuracy": 90.0}


@pytest.mark.parametrize("change, field", [({"flops": None}, "metrics.flops"),
                                           ({"accuracy": "90"}, "metrics.accuracy")])
def test_a_record_with_a_bad_field_is_one_error_naming_the_file_and_the_field(packed, change, field):
    md, _, sha, s = packed
    path = md.tasks_dir / "t" / "task.json"
    reseal(path, metrics={**_METRICS, **change})  # as a hand edit or another writer left it
    with pytest.raises(PackError, match=rf"tasks/t/task.json is not a valid task record: '{field}' must be"):
        md.task_record("t")
    reseal(path, metrics={k: v for k, v in _METRICS.items() if k != "task_params"})
    proc = run_cli("info", "--model-dir", str(md.root))
    assert "'metrics.task_params' is missing" in one_line_error(proc)  # was a KeyError traceback
    reseal(path, metrics=_METRICS, training={"phases": [{"name": "teacher", "seconds": 2.5}, {"seconds": 1.0}]})
    with pytest.raises(PackError, match=r"'training.phases.1.name' is missing"):
        md.task_record("t")


def test_records_parse_into_typed_objects(packed):
    md, _, sha, s = packed
    md.write_task("t", s.task_state(), _meta(sha, metrics=Metrics.from_json(_METRICS), data_spec="synth-digits",
                                             auto=AutoChoice.from_json(_AUTO)))
    rec = md.task_record("t")
    assert rec.metrics.universal_blocks_total == 2 and rec.metrics.teacher_accuracy is None
    assert rec.data_spec == "synth-digits" and rec.classes == ("a", "b", "c")
    assert [c.method for c in rec.auto.candidates] == ["linear", "flex"] and rec.auto.candidates[1].misses == ("x",)
    assert rec.pack.bytes == (md.tasks_dir / "t" / "task.safetensors").stat().st_size
    assert rec.phases == ()  # how it was trained: not said
    md.write_task("t", s.task_state(), _meta(sha))  # an older, shorter record still loads
    assert md.task_record("t").metrics is None and md.backbone_record().sha256 == sha


def test_records_are_written_from_the_typed_objects_they_read_back_as(packed):
    """A record reads back as the draft it was written from, and a draft the reader would refuse is not written."""
    md, _, sha, s = packed
    md.write_task("t", s.task_state(), _meta(sha, metrics=Metrics.from_json({**_METRICS, "prune": {"k": 1}}),
                                             data_spec="synth-digits", auto=AutoChoice.from_json(_AUTO)))
    rec = md.task_record("t")
    assert TaskDraft.of(rec).to_json(rec.task, rec.pack) == {k: v for k, v in rec.raw.items() if k != SEAL_KEY}
    assert rec.metrics.extra == {"prune": {"k": 1}} and rec.raw["config"] == {"max_skip": 3}
    before = (md.tasks_dir / "t" / "task.json").read_bytes()
    bad = dataclasses.replace(rec.metrics, flops=None)
    with pytest.raises(PackError, match="its record would not be valid .*'metrics.flops' must be"):
        md.write_task("t", s.task_state(), _meta(sha, metrics=bad))
    assert (md.tasks_dir / "t" / "task.json").read_bytes() == before
