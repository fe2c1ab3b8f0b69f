"""ONNX export: graphs that match PyTorch, shared weights stored once, atomic folders, the real CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tailorrt.backbone_spec import BackboneSpec
from tailorrt.errors import ExportError
from tailorrt.export import exporter
from tailorrt.export.exporter import ExportRequest, export_model
from tailorrt.files import read_json
from tailorrt.pack import ModelDir
from tailorrt.training.backbones import UniversalBackbone, get_spec
from tailorrt.training.methods.nettailor import NetTailor, emit_student
from tailorrt.training.methods.parts.student import Student
from tailorrt.training.onnx_graph import GraphBuilder, SharedWeights, save_graph
from tailorrt.training.onnx_layers import choose_fused
from tailorrt.training.packs import TrainingDir
from tests.conftest import one_line_error, run_cli, run_clis

SPECS = {
    "basic-cifar": get_spec("tiny"),
    "bottleneck-imagenet": BackboneSpec("tb", "bottleneck", (8, 16), (2, 1), (1, 2), "imagenet", 8, 32),
    "decathlon-headnorm": BackboneSpec("td", "decathlon", (8, 16, 32), (2, 1, 1), (2, 2, 2), "cifar", 8, 24,
                                       head_norm=True),
}
ALL_SPECS = {**SPECS, "mbconv": get_spec("tiny-mbconv")}  # with the MBConv family, for what runs on it


def _randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)


@torch.no_grad()
def _student(spec: BackboneSpec, seed: int = 0, own_norms: bool = False) -> tuple[UniversalBackbone, Student]:
    """A student with trained-looking statistics, random attention, and pruning of every kind."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = UniversalBackbone(spec).eval()
    _randomise_bn(backbone, gen)
    student = Student(backbone, 5, own_norms=own_norms)
    _randomise_bn(student, gen)
    for layer in student.layers:
        layer.alpha_params.copy_(torch.randn(len(layer.alpha_params), generator=gen) * 1.5)
    student.layers[1].keep[0] = False  # a universal block pruned, its proxies kept
    student.layers[-1].keep[-1] = False  # a proxy pruned
    assert student.settle()
    student.compact()
    return backbone, student.eval()


def _build(backbone, student, folder: Path, name: str = "t", fused: frozenset[str] = frozenset()
           ) -> tuple[onnx.ModelProto, GraphBuilder]:
    """The student's graph written to ``folder``, and the builder that made it."""
    shared = SharedWeights(backbone)
    shared.write(folder / "universal.data")
    g = GraphBuilder(name, shared, fused)
    emit_student(g, student)
    size = backbone.spec.input_size
    model = g.model((3, size, size), 5, {"task": name})
    save_graph(model, folder / f"{name}.onnx")
    return model, g


def _export(backbone, student, folder: Path, name: str = "t", fused: frozenset[str] = frozenset()) -> onnx.ModelProto:
    return _build(backbone, student, folder, name, fused)[0]


@pytest.mark.parametrize("kind", ALL_SPECS)
def test_graph_matches_pytorch_and_holds_only_kept_blocks(kind, tmp_path):
    backbone, student = _student(ALL_SPECS[kind])
    model = _export(backbone, student, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    size = backbone.spec.input_size
    x = torch.randn(6, 3, size, size)
    with torch.no_grad():
        ref = student(x)
    logits, probs = session.run(["logits", "probabilities"], {"input": x.numpy()})
    assert np.abs(logits - ref.numpy()).max() < 1e-5
    assert np.allclose(probs, torch.softmax(ref, 1).numpy(), atol=1e-6)
    ops = [n.op_type for n in model.graph.node]
    assert "Mul" not in ops  # attention is folded into the affines
    shared = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert not any(n.startswith("blocks.1.") for n in shared)  # the pruned universal block is absent
    proxies_kept = sum(int(layer.keep[1:].sum()) for layer in student.layers)
    universal_kept = sum(int(layer.keep[0]) for layer in student.layers)
    assert universal_kept < len(student.layers)
    universal_convs = sum(isinstance(m, nn.Conv2d) for layer in student.layers if layer.keep[0]
                          for m in layer.universal.modules())  # shortcut convolutions included
    head_convs = sum(isinstance(m, nn.Conv2d) for m in student.head_norm.modules())  # EfficientNet's 1x1 head
    per_proxy = 2 if backbone.spec.block == "bottleneck" else 1
    assert ops.count("Conv") == 1 + universal_convs + head_convs + proxies_kept * per_proxy
    assert ("Clip" in ops) == (backbone.spec.block == "mbconv")


def test_owned_norms_are_the_graphs_and_the_convolutions_stay_shared(tmp_path):
    """A task that owns its universal norms' scale and shift: the graph matches PyTorch with the task's own
    (not the backbone's), and its universal convolutions are still the shared external data."""
    backbone, student = _student(SPECS["basic-cifar"], own_norms=True)
    assert not torch.equal(student.layers[0].universal.bn1.weight, backbone.blocks[0].bn1.weight)
    model = _export(backbone, student, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, backbone.spec.input_size, backbone.spec.input_size)
    with torch.no_grad():
        ref = student(x)
    assert np.abs(session.run(["logits"], {"input": x.numpy()})[0] - ref.numpy()).max() < 1e-5
    shared = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert any(n.startswith("blocks.0.") for n in shared)


@pytest.mark.parametrize("kind", ALL_SPECS)
def test_fused_copies_fold_batch_norms_within_the_budget(kind, tmp_path):
    """The budget buys only shared convolutions the pruned network runs, within its bytes (a 3x3 full-resolution
    stem first); each chosen one is a private copy with its batch norm folded in, the rest stay shared, and the
    graph still matches PyTorch."""
    backbone, student = _student(ALL_SPECS[kind])
    shared = SharedWeights(backbone)
    size = backbone.spec.input_size
    shape = (3, size, size)
    assert choose_fused(student, shared, shape, 0) == frozenset()
    everything = choose_fused(student, shared, shape, shared.nbytes)
    assert not any(n.startswith("blocks.1.") for n in everything)  # pruned: not run, not bought
    stem = next(n for n in shared.tensors if n.startswith("stem."))
    assert stem in everything
    budget = max(shared.nbytes // 20, shared.tensors[stem].nbytes)
    part = choose_fused(student, shared, shape, budget)
    assert 0 < sum(shared.tensors[n].nbytes for n in part) <= budget and part < everything
    if backbone.spec.stem == "cifar":  # a 3x3 stem at full resolution: the most output per weight element
        assert stem in part
    assert student.training is False
    plain = _export(backbone, student, tmp_path, "plain")
    for name, fused in (("part", part), ("all", everything)):
        model, g = _build(backbone, student, tmp_path, name, fused)
        external = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        assert not external & fused and external | fused == {
            t.name for t in plain.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        assert sorted(g.fused_used) == sorted(fused)  # what it copied (export.json's count) is what it was given
        ops = [n.op_type for n in model.graph.node]
        bns = ops.count("BatchNormalization")
        assert bns == [n.op_type for n in plain.graph.node].count("BatchNormalization") - len(fused)
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        x = torch.randn(4, *shape)
        with torch.no_grad():
            ref = student(x).numpy()
        assert np.abs(session.run(["logits"], {"input": x.numpy()})[0] - ref).max() < 1e-4
    assert "BatchNormalization" not in [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("kind", ["basic-cifar", "mbconv"])
def test_a_task_on_the_backbones_own_norms_copies_nothing_the_budget_offers(kind, tmp_path):
    """Its convolutions have no pass after them (the norm is folded into the shared weight): a copy would cost
    bytes and buy nothing, so the graph references every shared weight even where the budget would pay for it."""
    from tailorrt.training import methods
    from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec

    torch.manual_seed(0)
    backbone = UniversalBackbone(ALL_SPECS[kind]).eval()
    _randomise_bn(backbone, torch.Generator().manual_seed(0))
    net = TunedNet(backbone, 5, TuneSpec()).eval()  # linear: nothing owned but the classifier
    shared = SharedWeights(backbone)
    size = backbone.spec.input_size
    everything = choose_fused(net, shared, (3, size, size), shared.nbytes)
    assert everything
    shared.write(tmp_path / "universal.data")
    g = GraphBuilder("t", shared, everything)
    methods.get("linear").emit(g, net)
    model = g.model((3, size, size), 5, {"task": "t"})
    save_graph(model, tmp_path / "t.onnx")
    assert g.fused_used == [] and "BatchNormalization" not in [n.op_type for n in model.graph.node]
    session = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = net(x).numpy()
    assert np.abs(session.run(["logits"], {"input": x.numpy()})[0] - ref).max() < 1e-4


def test_identity_layers_with_tiny_attention_still_match(tmp_path):
    """A universal block with a pass-through shortcut and a very small alpha: its scale is carried, not multiplied."""
    backbone, student = _student(get_spec("tiny"), seed=3)
    with torch.no_grad():
        student.layers[0].alpha_params.copy_(torch.tensor([-6.0, 4.0]))  # alpha_0 ~ 5e-5
    _export(backbone, student, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = student(x).numpy()
    assert np.abs(session.run(["logits"], {"input": x.numpy()})[0] - ref).max() < 1e-4


@pytest.mark.parametrize("name", ["embedded", "tiny-mbconv"])
def test_shared_weights_are_named_like_the_backbone_folded_and_aligned(name, tmp_path):
    backbone = UniversalBackbone(get_spec(name)).eval()
    _randomise_bn(backbone, torch.Generator().manual_seed(0))
    shared = SharedWeights(backbone)
    state = backbone.state_dict()
    assert set(shared.tensors) == {k for k in state if k.endswith("weight") and state[k].dim() == 4}
    assert set(shared.norm_scale) == set(shared.tensors)  # every convolution of these is followed by its norm
    shared.write(tmp_path / "u.data")
    raw = (tmp_path / "u.data").read_bytes()
    for key, (offset, length) in shared.offsets.items():
        assert offset % (4096 if length >= 64 * 1024 else 64) == 0
        module, _, last = key.removesuffix(".weight").rpartition(".")  # its norm: the next of a Sequential, bnK
        norm = backbone.get_submodule(f"{module}.{int(last) + 1 if last.isdigit() else last.replace('conv', 'bn')}")
        a = (norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)).detach()  # its norm, folded in
        expected = (state[key].double() * a[:, None, None, None]).float().numpy().astype("<f4").tobytes()
        assert raw[offset:offset + length] == expected, key


# ---------------------------------------------------------------------------------------------- the real CLI


@pytest.fixture()
def model_dir(exported_dir: Path) -> Path:
    """Two tiny tasks trained into one model dir, then exported with --bench (see conftest)."""
    return exported_dir


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_export_manifest_records_files_io_and_parity(model_dir):
    m = read_json(model_dir / "onnx" / "export.json")
    assert m["opset"] == 17 and set(m["tasks"]) == {"colors", "hues"}
    assert m["shared"]["sha256"] == hashlib.sha256((model_dir / "onnx" / "universal.data").read_bytes()).hexdigest()
    for name, t in m["tasks"].items():
        path = model_dir / "onnx" / t["file"]
        assert t["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and t["bytes"] == path.stat().st_size
        assert onnx.load(str(path), load_external_data=False).ir_version == m["ir_version"]
        assert t["inputs"][0] == {"name": "input", "dtype": "float32", "shape": ["batch", 3, 16, 16]}
        assert [o["name"] for o in t["outputs"]] == ["logits", "probabilities"]
        assert t["outputs"][0]["shape"] == ["batch", 3 if name == "colors" else 4]
        assert t["parity"]["max_abs_logit_diff"] <= 1e-4 and t["parity"]["top1_agreement"] == 1.0
        assert t["parity"]["images"] > 0
        for b in ("batch_1", "batch_32"):
            assert t["speed"][b]["pytorch"]["images_per_s"] > 0 and t["speed"][b]["onnxruntime"]["images_per_s"] > 0
        typed = ModelDir(model_dir).export_record("onnx").tasks[name].speed  # the same figures, parsed once
        assert [b.batch for b in typed] == [1, 32]
        assert all(b.images_per_s["onnxruntime"] == t["speed"][f"batch_{b.batch}"]["onnxruntime"]["images_per_s"]
                   for b in typed)


def test_universal_weights_are_stored_once_and_referenced_by_every_graph(model_dir):
    onnx_dir = model_dir / "onnx"
    names = {}
    for task in ("colors", "hues"):
        model = onnx.load(str(onnx_dir / f"{task}.onnx"), load_external_data=False)
        ext = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert {e.key: e.value for e in ext[0].external_data}["location"] == "universal.data"
        names[task] = {t.name for t in ext}
        assert all(not t.name.startswith("blocks.") for t in model.graph.initializer if t.raw_data)
    assert names["colors"] & names["hues"]  # the same shared names in both graphs
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["colors.onnx", "export.json", "hues.onnx", "universal.data"]
    backbone = (model_dir / "backbone" / "backbone.safetensors").stat().st_size
    packs = sum((model_dir / "tasks" / t / "task.safetensors").stat().st_size for t in ("colors", "hues"))
    total = sum(p.stat().st_size for p in onnx_dir.iterdir() if p.name != "export.json")
    assert total < backbone + 1.1 * packs


def test_plain_onnxruntime_session_with_only_the_data_file_beside_it(model_dir, tmp_path):
    for name in ("universal.data", "hues.onnx"):
        shutil.copy(model_dir / "onnx" / name, tmp_path / name)
    session = ort.InferenceSession(str(tmp_path / "hues.onnx"))  # nothing tailorrt-specific
    mdir = TrainingDir(model_dir)
    backbone, bmeta = mdir.load_backbone()
    student, rec = mdir.load_model("hues", backbone, bmeta.sha256)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "hues.onnx"), load_external_data=False).metadata_props}
    assert json.loads(props["tailorrt.classes"]) == list(rec.classes)
    x = torch.randn(9, 3, 16, 16)
    with torch.no_grad():
        ref = student(x).numpy()
    got = session.run(None, {"input": x.numpy()})
    assert np.abs(got[0] - ref).max() <= 1e-4 and (got[0].argmax(1) == ref.argmax(1)).all()


def test_info_shows_export_sizes(model_dir):
    proc = run_cli("info", "--model-dir", str(model_dir), check=True)
    assert "onnx/: shared universal.data" in proc.stdout and "one fine-tuned model per task" in proc.stdout
    data = json.loads(run_cli("info", "--model-dir", str(model_dir), "--json", check=True).stdout)
    assert all(r["onnx_bytes"] > 0 and r["engine_bytes"] is None for r in data["tasks"])
    sizes = data["sizes"]
    assert sizes["exports"]["onnx"]["bytes"] == sum(p.stat().st_size for p in (model_dir / "onnx").iterdir()
                                               if p.name != "export.json")
    assert sizes["finetuned_per_task_bytes"] > 2 * sizes["backbone_bytes"]


def test_export_of_one_task_carries_the_others_over(model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    before = read_json(copy / "onnx" / "export.json")["tasks"]["colors"]
    run_cli("export", "--model-dir", str(copy), "--tasks", "hues", check=True)
    after = read_json(copy / "onnx" / "export.json")["tasks"]
    assert set(after) == {"colors", "hues"} and after["colors"]["sha256"] == before["sha256"]
    assert "speed" not in after["hues"]


def test_interrupted_export_keeps_the_previous_one(model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    stale = copy / ".work" / "export-onnx-999999999-x"  # left by a killed export
    stale.mkdir(parents=True)
    before = _digest(copy / "onnx")
    real = exporter._export_task_graph
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(exporter, "_export_task_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(ExportRequest(model_dir=str(copy)))
    assert _digest(copy / "onnx") == before
    assert not list((copy / ".work").glob("export-*"))


def test_parity_failure_aborts_and_keeps_the_previous_export(model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    before = _digest(copy / "onnx")
    real = NetTailor.emit

    def off_by_a_little(self, g, student):
        real(self, g, student)
        bias = next(n for n in g.private if "fc_b" in n)
        g.private[bias] = g.private[bias] + np.float32(1e-2)

    monkeypatch.setattr(NetTailor, "emit", off_by_a_little)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_model(ExportRequest(model_dir=str(copy)))
    assert _digest(copy / "onnx") == before


def test_parity_is_judged_against_the_logits_scale():
    from tailorrt.export import parity

    check = parity.compare(lambda x: x[:, :, 0, 0] * 200.0, lambda x: x[:, :, 0, 0] * 200.0 + 1e-3,
                           np.ones((4, 3, 2, 2), np.float32))
    assert check["max_abs_logit"] == 200.0 and check["max_abs_logit_diff"] == pytest.approx(1e-3, rel=0.02)
    assert parity.allowed(check, 1e-4) == pytest.approx(2e-2)  # 1e-3 on logits of 200 is float32 rounding
    assert parity.allowed({**check, "max_abs_logit": 0.01}, 1e-4) == 1e-4  # small logits: the tolerance itself


def _tensorrt_usable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT and a CUDA GPU are present here")
def test_trt_without_tensorrt_exits_2_with_install_hint(model_dir):
    line = one_line_error(run_cli("export", "--model-dir", str(model_dir), "--trt"), code=2)
    assert "pip install 'tailorrt[gpu]'" in line


def test_bad_export_options_areone_line_error(model_dir, tmp_path):
    fp16, nope, empty = run_clis(("export", "--model-dir", str(model_dir), "--fp16"),
                                 ("export", "--model-dir", str(model_dir), "--tasks", "nope"),
                                 ("export", "--model-dir", str(tmp_path / "empty")))
    assert "--trt" in one_line_error(fp16)
    assert "no task 'nope'" in one_line_error(nope)
    assert "no backbone" in one_line_error(empty)


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_usable(), reason="needs TensorRT and a CUDA GPU (pip install 'tailorrt[gpu]')")
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_engines_match_onnxruntime(model_dir, tmp_path, fp16):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    args = ["export", "--model-dir", str(copy), "--trt", "--max-batch", "8"] + (["--fp16"] if fp16 else [])
    run_cli(*args, check=True)
    m = read_json(copy / "trt" / "export.json")
    assert set(m["tasks"]) == {"colors", "hues"} and (copy / "trt" / "timing.cache").stat().st_size > 0
    for t in m["tasks"].values():
        assert (copy / "trt" / t["file"]).stat().st_size == t["bytes"]
        assert t["parity"]["max_abs_logit_diff"] <= t["parity"]["allowed_diff"]


class _FakeRunner:
    """Stands in for a TensorRT engine: the 'plan' names an ONNX file that ONNX Runtime runs."""

    offset = 0.0

    def __init__(self, trt, plan: bytes) -> None:
        self.session = ort.InferenceSession(plan.decode(), providers=["CPUExecutionProvider"])

    def logits(self, x):
        return self.session.run(["logits"], {"input": x})[0] + self.offset


def test_trt_export_plumbing_with_a_stand_in_engine(model_dir, tmp_path, monkeypatch):
    """The --trt orchestration (timing cache reuse, manifest, parity gate, atomic swap) without a GPU.
    The TensorRT API calls themselves are covered by the GPU test above."""
    import types

    from tailorrt.export import trt_export
    from tailorrt.training import trt_runner

    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    caches_seen = []

    def build(trt, onnx_path, *, timing_cache, **kwargs):
        caches_seen.append(timing_cache)
        return str(onnx_path).encode(), timing_cache + onnx_path.name.encode(), 0.01

    monkeypatch.setattr(trt_runner, "require_tensorrt", lambda: types.SimpleNamespace(__version__="fake"))
    monkeypatch.setattr(trt_export, "timed_build", build)
    monkeypatch.setattr(trt_export, "EngineRunner", _FakeRunner)
    monkeypatch.setattr(trt_export, "gpu_name", lambda: "none")
    export_model(ExportRequest(model_dir=str(copy), trt=True, max_batch=4))
    m = read_json(copy / "trt" / "export.json")
    assert set(m["tasks"]) == {"colors", "hues"} and m["profile"]["max_batch"] == 4
    assert caches_seen[0] == b"" and caches_seen[1] == b"colors.onnx"  # one cache carried across tasks
    assert (copy / "trt" / "timing.cache").read_bytes() == b"colors.onnxhues.onnx"
    for t in m["tasks"].values():
        assert t["parity"]["max_abs_logit_diff"] <= 1e-6 and t["parity"]["reference"].startswith("onnxruntime")
    trt_info = json.loads(run_cli("info", "--model-dir", str(copy), "--json", check=True).stdout)["sizes"]["exports"]
    assert trt_info["trt"]["tasks"] == 2 and trt_info["trt"]["summary"].startswith("trt/: 2 engines (fp32)")
    before = _digest(copy / "trt")
    monkeypatch.setattr(_FakeRunner, "offset", 0.5)
    with pytest.raises(ExportError, match="TensorRT engine differs"):
        export_model(ExportRequest(model_dir=str(copy), trt=True, max_batch=4, tasks=["hues"]))
    assert _digest(copy / "trt") == before
    assert caches_seen[-1] == b"colors.onnxhues.onnx"  # the saved cache was read back


def test_export_folder_killed_mid_swap_is_put_back(model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    before = _digest(copy / "onnx")
    (copy / "onnx").rename(copy / ".onnx.old-999999999")  # killed after moving the old export aside
    proc = run_cli("info", "--model-dir", str(copy), check=True)
    assert "onnx/: shared universal.data" in proc.stdout
    assert _digest(copy / "onnx") == before and not list(copy.glob(".onnx.old-*"))


def test_sigkilled_export_keeps_the_previous_one(model_dir, tmp_path):
    import signal
    import subprocess
    import time

    from tests.conftest import TAILOR

    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    before = _digest(copy / "onnx")
    proc = subprocess.Popen([str(TAILOR), "export", "--model-dir", str(copy)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 120, False
    while time.time() < deadline and proc.poll() is None:
        if any((d / "universal.data").is_file() for d in (copy / ".work").glob("export-onnx-*")):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert killed, "the export finished before it could be killed"
    assert _digest(copy / "onnx") == before
    run_cli("export", "--model-dir", str(copy), "--tasks", "colors", check=True)  # cleans up after the killed one
    assert not list((copy / ".work").glob("export-*"))


def test_an_export_record_the_reader_would_refuse_is_not_written(model_dir, tmp_path):
    """The export steps write their record through the reader: a manifest with a bad field is one ExportError and no
    file, and a good one comes back typed, as the runtime will read it."""
    from tailorrt.export.common import write_manifest

    good = read_json(model_dir / "onnx" / "export.json")
    record = write_manifest(tmp_path / "export.json", good)
    assert record == ModelDir(model_dir).export_record("onnx") and (tmp_path / "export.json").is_file()
    bad = {**good, "tasks": {"colors": {**good["tasks"]["colors"], "sha256": "not a sha"}}}
    with pytest.raises(ExportError, match=r"onnx export's record would not be valid \('tasks.colors.sha256' is not"):
        write_manifest(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()
