"""Low precision: int8 graphs that share the universal int8 weights, the accuracy refusal, the load-time check that
refuses int8 answers that differ on this CPU, ``tailor serve --precision int8``, and bf16 (refused in one line on a
CPU without bf16 instructions; its autocast path run with the CPU check answered as on one that has them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load_file, save_file

import tailorrt.cpu
from tailorrt import Runtime
from tailorrt.cpu import BF16_FLAGS, cpu_flags, cpu_summary
from tailorrt.errors import ConfigError, DependencyMissingError, ExportError, PackError
from tailorrt.export import low_precision
from tailorrt.export.exporter import ExportRequest, export_model
from tailorrt.export.quantize import QMAX, CanonicalWeights, quantize_per_channel
from tailorrt.files import sha256_file
from tailorrt.pack import ModelDir
from tailorrt.precision import check_precision
from tailorrt.records import AccuracyCheck
from tailorrt.serving.app import ServerConfig, create_app
from tailorrt.training.onnx_graph import SharedWeights
from tailorrt.training.packs import TrainingDir
from tests.conftest import one_line_error, reseal, run_clis

NATIVE_BF16 = any(f in cpu_flags() for f in BF16_FLAGS)


def val_images(root: Path, task: str) -> np.ndarray:
    """The images the export stored for the int8 load check (real validation images of the task)."""
    check = ModelDir(root).export_record("onnx-int8").tasks[task].check
    return load_file(str(root / "onnx-int8" / check.name))["input"]


def test_per_channel_quantisation_round_trips():
    w = np.random.default_rng(0).standard_normal((5, 3, 3, 3)).astype(np.float32)
    w[2] = 0.0  # a dead channel keeps scale 1 and zeros
    q, s = quantize_per_channel(w)
    assert q.dtype == np.int8 and np.abs(q).max() == QMAX and s[2] == 1.0 and not q[2].any()
    assert np.abs(s[:, None, None, None] * q - w).max() <= s.max() / 2 + 1e-7


def test_int8_graphs_share_the_canonical_weights(exported_dir):
    mdir = TrainingDir(exported_dir)
    manifest = mdir.export_record("onnx-int8").raw  # the int8 kind's own fields
    backbone, _ = mdir.load_backbone()
    canonical = CanonicalWeights.of(SharedWeights(backbone).tensors)
    data = (exported_dir / "onnx-int8" / "universal-int8.data").read_bytes()
    for name, (offset, length) in canonical.offsets.items():  # the shared file is the backbone quantised once
        assert data[offset:offset + length] == canonical.q[name].tobytes()
    assert manifest["shared"]["int8_bytes"] == canonical.nbytes
    for task, entry in manifest["tasks"].items():
        # every universal conv whose batch-norm scales are positive points into the shared file
        assert entry["shared_int8_bytes"] > 0, task
        check = AccuracyCheck.from_json(entry["accuracy_check"])  # the record's typed figures read what was written
        assert check.drop_points == pytest.approx(check.fp32_accuracy - check.accuracy, abs=1e-3)
        assert check == mdir.export_record("onnx-int8").tasks[task].accuracy_check
        assert entry["calibration"]["images"] > 0


def test_int8_runtime_agrees_with_fp32_and_stores_shared_weights_once(exported_dir):
    fp32 = Runtime(exported_dir, backend="onnx")
    int8 = Runtime(exported_dir, backend="onnx", precision="int8")
    assert int8.precision == "int8" and int8.tasks == ["colors", "hues"]
    for task in int8.tasks:
        x = val_images(exported_dir, task)
        a, b = fp32.logits(task, x), int8.logits(task, x)
        assert np.abs(a - b).max() < 0.25 * max(1.0, np.abs(a).max())
        assert (a.argmax(1) == b.argmax(1)).mean() >= 0.75
    assert int8.backend.store.shared_bytes() > 0  # the universal int8 tensors both tasks use are held once
    own = Runtime(exported_dir, backend="onnx", precision="int8", share_weights=False)  # pre-packed per session
    for task in own.tasks:
        x = val_images(exported_dir, task)
        assert np.abs(own.logits(task, x) - int8.logits(task, x)).max() < 1e-3
    p = int8.predict("colors", val_images(exported_dir, "colors")[:2])
    assert len(p) == 2 and p[0].labels[0] in int8.task("colors").classes


def test_int8_answers_that_differ_on_this_cpu_are_refused(exported_dir, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(exported_dir, root)
    manifest_path = root / "onnx-int8" / "export.json"
    check = root / "onnx-int8" / ModelDir(root).export_record("onnx-int8").tasks["hues"].check.name
    stored = load_file(str(check))
    save_file({"input": stored["input"], "logits": stored["logits"] + 10.0}, str(check))  # as another CPU computed
    tasks = json.loads(manifest_path.read_text())["tasks"]
    tasks["hues"]["check"]["sha256"] = sha256_file(check)
    reseal(manifest_path, tasks=tasks)
    with pytest.raises(PackError, match="int8 logits on this CPU .* differ by 10 from those of the export"):
        Runtime(root, backend="onnx", precision="int8", tasks=["hues"])
    assert Runtime(root, backend="onnx", precision="int8", tasks=["colors"]).tasks == ["colors"]


def test_an_export_losing_accuracy_is_refused_and_the_previous_kept(exported_dir, tmp_path, monkeypatch):
    root = tmp_path / "m"
    shutil.copytree(exported_dir, root)
    before = (root / "onnx-int8" / "export.json").read_bytes()
    real = low_precision.batches

    def black_calibration(dataset, count, **kw):  # calibrated on black images: every activation range collapses
        for x in real(dataset, count, **kw):
            yield x if kw.get("labels") else np.zeros_like(x)

    monkeypatch.setattr(low_precision, "batches", black_calibration)
    with pytest.raises(ExportError, match=r"'colors': int8 loses .* points of (test|val) accuracy .* more than "
                                          r"--max-precision-drop 0.5; the int8 export was not written"):
        export_model(ExportRequest(model_dir=str(root), tasks=["colors"], precision="int8", download=False))
    assert (root / "onnx-int8" / "export.json").read_bytes() == before
    assert not list((root / ".work").glob("export-onnx_int8-*"))


def test_the_server_answers_int8_as_the_runtime(exported_dir):
    """In process (the CLI's --precision reaches the same Runtime argument: the bf16 refusal below runs it)."""
    runtime = Runtime(exported_dir, backend="onnx", precision="int8", tasks=["colors"])
    x = val_images(exported_dir, "colors")[:2]
    want = runtime.logits("colors", x)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            "outputs": [{"name": "logits"}]}
    with TestClient(create_app(runtime, ServerConfig())) as client:
        meta, tasks = client.get("/v2/models/colors").json(), client.get("/v1/tasks").json()
        got = client.post("/v2/models/colors/infer", json=body).json()
    assert meta["parameters"]["precision"] == "int8" and tasks["precision"] == "int8"
    logits = np.array(got["outputs"][0]["data"], np.float32).reshape(want.shape)
    assert np.abs(logits - want).max() < 1e-4


def test_precision_checks(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_bf16\n")
    flags = cpu_flags(cpuinfo)
    assert {"avx2", "avx512_vnni", "amx_bf16"} <= flags and cpu_flags(tmp_path / "none") == set()
    assert cpu_summary(flags) == "AVX-512, avx512_vnni, amx_bf16"
    check_precision("bf16", "torch", "cpu", flags)  # accepted where the CPU has bf16
    with pytest.raises(DependencyMissingError, match=r"bf16 needs a CPU with AVX512-BF16 or AMX \(this one: AVX2"):
        check_precision("bf16", "torch", "cpu", {"avx2"})
    check_precision("bf16", "torch", "cuda", set())
    for args, match in ((("int8", "torch"), "int8 runs on the onnx backend"), (("bf16", "onnx"), "on the torch"),
                        (("fp16", "onnx"), "unknown precision"), (("int8", "onnx", "cuda"), "use TensorRT")):
        with pytest.raises(ConfigError, match=match):
            check_precision(*args, flags=set())


@pytest.mark.skipif(NATIVE_BF16, reason="this CPU has bf16 instructions: the refusal does not apply")
def test_bf16_is_refused_in_one_line_without_bf16_instructions(exported_dir):
    serve, export = run_clis(("serve", "--model-dir", str(exported_dir), "--backend", "torch", "--precision", "bf16"),
                             ("export", "--model-dir", str(exported_dir), "--precision", "bf16"))
    for proc in (serve, export):
        assert "bf16 needs a CPU with AVX512-BF16 or AMX" in one_line_error(proc, code=2)  # a missing dependency


def test_bf16_export_and_runtime(exported_dir, tmp_path, monkeypatch):
    """The bf16 path itself (autocast, the accuracy check, the export record the runtime needs), run here with the
    CPU check answered as on a CPU with AMX: where it is emulated it is slow, not different."""
    root = tmp_path / "m"
    shutil.copytree(exported_dir, root)
    monkeypatch.setattr(tailorrt.cpu, "cpu_flags", lambda *a: {"avx2", "amx_bf16"})
    with pytest.raises(PackError, match="no bf16 export .* tailor export --precision bf16"):
        Runtime(root, backend="torch", precision="bf16")
    result = export_model(ExportRequest(model_dir=str(root), precision="bf16", download=False, max_precision_drop=100))
    for check in (e.accuracy_check for e in result["bf16"].tasks.values()):
        assert check.images > 0 and check.top1_agreement >= 0.75
    fp32, bf16 = Runtime(root, backend="torch"), Runtime(root, backend="torch", precision="bf16")
    for task in bf16.tasks:
        size = bf16.task(task).preprocess.size
        x = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
        a, b = fp32.logits(task, x), bf16.logits(task, x)
        assert b.dtype == np.float32 and 0 < np.abs(a - b).max() < 0.1 * max(1.0, np.abs(a).max())


def test_a_universal_conv_with_no_norm_after_it_is_written_as_its_canonical_weights():
    """A task that runs the backbone's own norms has none after its shared convs (they are folded into the shared
    weight); its conv must still hold ``s * q`` so that the quantiser finds the canonical ``q`` (it kept a private
    int8 copy of every such conv before)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tailorrt.export.quantize import fold_batchnorms

    w = np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32)
    b = np.arange(4, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "blocks.0.w", "bias"], ["y"], name="c"),
         helper.make_node("Relu", ["y"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 2, 2])],
        [numpy_helper.from_array(w, "blocks.0.w"), numpy_helper.from_array(b, "bias")])
    model = helper.make_model(graph)
    canonical = CanonicalWeights.of({"blocks.0.w": w})
    assert fold_batchnorms(model, canonical) == 0  # no norm folded, but the weight rewritten
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv = model.graph.node[0]
    expected = (canonical.scale["blocks.0.w"][:, None, None, None] * canonical.q["blocks.0.w"]).astype(np.float32)
    assert np.array_equal(inits[conv.input[1]], expected) and np.array_equal(inits[conv.input[2]], b)
    onnx.checker.check_model(model)
