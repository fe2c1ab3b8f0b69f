"""Every file the runtime, export and eval read is checked against its recorded sha256 before it is used:
bytes flipped in each kind of file are refused with an error naming the file, by the library and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tailorrt import Runtime
from tailorrt.errors import IntegrityError, PackError
from tailorrt.integrity import SEAL_KEY, FileVerifier
from tailorrt.pack import ModelDir
from tests.conftest import flip, one_line_error, reseal, run_cli

# (file, backend that reads it): the onnx backend reads graphs and universal.data, torch the safetensors
FILES = [
    ("onnx/universal.data", "onnx"),
    ("onnx/colors.onnx", "onnx"),
    ("onnx/export.json", "onnx"),
    ("tasks/colors/task.safetensors", "torch"),
    ("tasks/colors/task.json", "torch"),
    ("tasks/colors/task.json", "onnx"),
    ("backbone/backbone.safetensors", "torch"),
    ("backbone/backbone.json", "onnx"),
]


@pytest.fixture
def copy(exported_dir, tmp_path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(exported_dir, dst)
    return dst


@pytest.mark.parametrize("name,backend", FILES, ids=[f"{f}-{b}" for f, b in FILES])
def test_flipped_bytes_are_refused_naming_the_file(copy, name, backend):
    Runtime(copy, tasks=["colors"], backend=backend)  # intact: loads
    flip(copy / name, count=16)
    with pytest.raises(PackError) as e:
        Runtime(copy, tasks=["colors"], backend=backend)
    assert Path(name).name in str(e.value)
    assert "\n" not in str(e.value)


def test_the_cli_refuses_corrupt_files_in_one_line(copy):
    flip(copy / "tasks" / "colors" / "task.safetensors", count=4096)
    line = one_line_error(run_cli("eval", "--task", "colors", "--model-dir", str(copy), "--data-dir", str(copy)))
    assert "task.safetensors" in line and "changed or corrupted" in line
    line = one_line_error(run_cli("export", "--model-dir", str(copy), "--tasks", "colors"))
    assert "task.safetensors" in line
    flip(copy / "onnx" / "universal.data")
    line = one_line_error(run_cli("serve", "--model-dir", str(copy), "--port", "1"))  # as tailor predict loads
    assert "universal.data" in line and "does not match the sha256 recorded in" in line


def test_files_are_hashed_once_per_identity(tmp_path, monkeypatch):
    calls = []
    from tailorrt import integrity

    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: calls.append(p) or real(p))
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    sha = real(f)
    v = FileVerifier()
    v.verify(f, sha, recorded_in="r.json", remedy="x")
    v.verify(f, sha, recorded_in="r.json", remedy="x")
    assert len(calls) == 1  # a runtime adding tasks does not hash the shared weights again
    f.write_bytes(b"b" * 1000)  # rewritten in place: hashed again, and refused
    with pytest.raises(IntegrityError, match="w.bin does not match the sha256 recorded in r.json"):
        v.verify(f, sha, recorded_in="r.json", remedy="x")
    assert len(calls) == 2
    with pytest.raises(IntegrityError, match="missing"):
        v.verify(tmp_path / "gone.bin", sha, recorded_in="r.json", remedy="x")


def test_records_are_sealed_and_checked(copy):
    path = copy / "tasks" / "colors" / "task.json"
    record = json.loads(path.read_text())
    assert len(record[SEAL_KEY]) == 64
    edited = {**record, "classes": ["a", "b", "c"]}  # a hand edit that keeps the JSON valid
    path.write_text(json.dumps(edited))
    with pytest.raises(IntegrityError, match="task.json was changed or corrupted"):
        ModelDir(copy).task_record("colors")
    path.write_text(json.dumps({k: v for k, v in edited.items() if k != SEAL_KEY}))  # written before seals
    assert ModelDir(copy).task_record("colors").classes == ("a", "b", "c")
    path.write_text(json.dumps([1]))
    with pytest.raises(PackError, match="task.json does not hold a JSON object"):
        ModelDir(copy).task_record("colors")


@pytest.mark.parametrize("changes,message", [
    ({"drop": ("classes",)}, "'classes' is missing"),
    ({"classes": None}, "'classes' must be a list, not NoneType"),
    ({"classes": []}, "non-empty list"),
    ({"classes": "abc"}, "'classes' must be a list"),
    ({"backbone_sha256": "xyz"}, "not a sha256"),
    ({"preprocess": {"resize": [0, 0], "mean": [0, 0, 0], "std": [1, 1, 1]}}, "size in 1..4096"),
    ({"preprocess": {"resize": [8, 8], "mean": [0, 0, 0], "std": [1, 0, 1]}}, "positive numbers"),
    ({"files": {}}, "exactly one weights file"),
    ({"drop": ("config",)}, "does not describe a network"),
])
def test_invalid_task_records_are_one_error_naming_the_file(copy, changes, message):
    reseal(copy / "tasks" / "colors" / "task.json", **changes)
    with pytest.raises(PackError, match=message) as e:
        Runtime(copy, tasks=["colors"], backend="torch")
    assert "task.json" in str(e.value)


def test_export_entries_must_name_plain_files(copy):
    manifest = json.loads((copy / "onnx" / "export.json").read_text())
    manifest["tasks"]["colors"]["file"] = "../tasks/colors/task.safetensors"
    reseal(copy / "onnx" / "export.json", tasks=manifest["tasks"])
    with pytest.raises(PackError, match="plain file name"):
        Runtime(copy, tasks=["colors"], backend="onnx")


def test_an_unreadable_previous_export_is_replaced_not_fatal(copy):
    (copy / "onnx" / "export.json").write_text("{broken")
    proc = run_cli("export", "--model-dir", str(copy), "--tasks", "colors", check=True)
    assert "previous onnx export is not used" in proc.stderr
    assert Runtime(copy, tasks=["colors"], backend="onnx").tasks == ["colors"]


def test_engine_files_and_the_timing_cache_are_checked_without_a_gpu(copy):
    """The tensorrt backend and ``export --trt`` read trt/ through the same checks (run here without TensorRT)."""
    from tailorrt.export.trt_export import _timing_cache
    from tailorrt.files import sha256_file
    from tailorrt.records import EngineSettings, FileRef, write_record

    trt = copy / "trt"
    trt.mkdir()
    (trt / "colors.engine").write_bytes(b"engine" * 1000)
    (trt / "timing.cache").write_bytes(b"cache" * 100)
    entry = {"file": "colors.engine", "sha256": sha256_file(trt / "colors.engine")}
    manifest = {"format_version": 1, "kind": "tensorrt", "backbone_sha256": "0" * 64, "max_batch": 8, "fp16": True,
                "tensorrt": "10.9", "gpu": "a GPU", "tasks": {"colors": entry},
                "timing_cache": {"file": "timing.cache", "bytes": 500, "sha256": sha256_file(trt / "timing.cache")}}
    write_record(trt / "export.json", manifest)
    mdir = ModelDir(copy)
    record = mdir.export_record("trt")
    assert record.tasks["colors"].file == FileRef.entry(entry) and record.max_batch == 8
    assert record.engines == EngineSettings(True, 8, "10.9", "a GPU")  # a later export reuses engines only if equal
    assert mdir.export_file("trt", FileRef.entry(entry)).read_bytes() == b"engine" * 1000
    assert _timing_cache(trt, record, print) == b"cache" * 100
    flip(trt / "colors.engine", count=8)
    flip(trt / "timing.cache", count=8)
    with pytest.raises(IntegrityError, match="colors.engine does not match"):
        ModelDir(copy).export_file("trt", FileRef.entry(entry))
    said = []
    assert _timing_cache(trt, record, said.append) == b"" and "timing.cache" in said[0]
