import pytest
import torch

from tailorrt.backbones import BackboneSource, UniversalBackbone, get_spec
from tailorrt.datasets import Preprocess
from tailorrt.errors import BackboneMismatchError, IntegrityError, PackError
from tailorrt.methods.student import Student
from tailorrt.pack import ModelDir
from tests.conftest import reseal


def _student(backbone):
    return Student(backbone, 3).eval()


def _meta(sha):
    return {"method": "nettailor", "backbone_sha256": sha, "classes": ["a", "b", "c"], "config": {"max_skip": 3},
            "preprocess": Preprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).to_json()}


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
    loaded, meta = md.load_model("t", bb, sha)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), s(x))
    assert meta["format_version"] == 1 and meta["files"]["task.safetensors"]["bytes"] > 0
    with pytest.raises(BackboneMismatchError, match="retrain the task"):
        md.read_task("t", "0" * 64)
    with pytest.raises(PackError, match="no task 'nope'"):
        md.task_meta("nope")
    with pytest.raises(PackError, match="invalid task name"):
        md.write_task("Bad Name", {}, {})


def test_future_format_version_refused(packed):
    md = packed[0]
    reseal(md.tasks_dir / "t" / "task.json", format_version=99)
    with pytest.raises(PackError, match="format_version 99"):
        md.task_meta("t")


def test_failed_write_keeps_previous_pack_and_leaves_no_partial(packed, tmp_path, monkeypatch):
    md, _, sha, s = packed
    before = (md.tasks_dir / "t" / "task.safetensors").read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("tailorrt.pack.write_record", crash)
    with pytest.raises(KeyboardInterrupt):
        md.write_task("t", s.task_state(), {**_meta(sha), "note": "new"})
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
