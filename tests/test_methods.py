"""Methods other than NetTailor: what each task owns, graphs that match PyTorch, early stopping, and the real CLI
training several methods that export and serve side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient

from tailorrt import Runtime
from tailorrt.backbones import UniversalBackbone, get_spec
from tailorrt.errors import ConfigError, PackError
from tailorrt.export.graph import GraphBuilder, SharedWeights, save_graph
from tailorrt.export.networks import emit_network
from tailorrt.serving.app import create_app
from tailorrt.serving.local import png_bytes
from tailorrt.training import PhaseConfig, Trainer
from tailorrt.tuned import TunedNet, TuneSpec, parse_method
from tests.conftest import class_image, one_line_error, run_cli
from tests.test_export import SPECS, _randomise_bn

METHODS = ["linear", "linear:2", "finetune-last:2", "finetune-all", "scale-shift"]


def _backbone(spec=None, seed: int = 0) -> UniversalBackbone:
    torch.manual_seed(seed)
    backbone = UniversalBackbone(spec or get_spec("tiny")).eval()
    _randomise_bn(backbone, torch.Generator().manual_seed(seed))
    return backbone


def _net(backbone: UniversalBackbone, spec: TuneSpec, seed: int = 1) -> TunedNet:
    """A tuned net whose owned parts differ from the backbone (as after training)."""
    net = TunedNet(backbone, 5, spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    for i, unit in enumerate(net.units):
        if spec.bn == "affine" or i in spec.units:  # the task's own statistics
            _randomise_bn(unit, gen)
    return net.eval()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_owns_exactly_its_parts(method):
    backbone = _backbone()
    spec = parse_method(method, backbone.num_units)
    net = _net(backbone, spec)
    state = net.task_state()
    shared_ids = {id(p) for p in backbone.parameters()}
    for i, unit in enumerate(net.units):
        convs = [m for m in unit.modules() if isinstance(m, torch.nn.Conv2d)]
        owned = i in spec.units
        assert all((id(c.weight) in shared_ids) != owned for c in convs)  # shared convs ARE the backbone's
        assert any(k.startswith(f"units.{i}.") for k in state) == (owned or spec.bn == "affine")
    if method.startswith("linear"):
        assert set(state) == {"classifier.weight", "classifier.bias"}
    if method == "scale-shift":
        assert not any(k.endswith("conv1.weight") or k.endswith("conv2.weight") for k in state)
    if method == "linear:2":
        assert len(net.units) == 3  # the classifier reads unit 2; later units are not run
    fresh = TunedNet(backbone, 5, spec).eval()
    fresh.load_task_state(state)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))
    with pytest.raises(PackError, match="missing classifier.bias"):
        TunedNet(backbone, 5, spec).load_task_state({k: v for k, v in state.items() if k != "classifier.bias"})


def test_method_names_are_checked():
    n = _backbone().num_units
    assert parse_method("nettailor", n) is None and parse_method("fast-flex", n) is None
    for bad in ("finetune-last:0", f"finetune-last:{n + 1}", f"linear:{n}", "linear:x"):
        with pytest.raises(ConfigError):
            parse_method(bad, n)
    assert parse_method("finetune-all:2", n) is None  # not a classic method: rejected by check_method


def test_shared_units_keep_the_backbones_statistics_while_training():
    backbone = _backbone()
    net = TunedNet(backbone, 3, TuneSpec(units=(1,))).train()
    assert [u.training for u in net.units] == [i == 1 for i in range(len(net.units))]
    net = TunedNet(backbone, 3, TuneSpec(bn="affine")).train()
    assert all(u.training for u in net.units)


@pytest.mark.parametrize("kind", SPECS)
@pytest.mark.parametrize("spec", [TuneSpec(), TuneSpec(feature_unit=1), TuneSpec(units=(1,)), TuneSpec(units=(0, 2)),
                                  TuneSpec(bn="affine")], ids=["linear", "linear-1", "flex-1", "units-0-2", "ss"])
def test_tuned_graphs_match_pytorch_and_share_what_is_shared(kind, spec, tmp_path):
    backbone = _backbone(SPECS[kind])
    if spec.feature_unit is None and spec.units and max(spec.units) >= backbone.num_units:
        pytest.skip("backbone too short")
    net = _net(backbone, spec)
    shared = SharedWeights(backbone)
    shared.write(tmp_path / "universal.data")
    g = GraphBuilder("t", shared)
    emit_network(g, net)
    size = backbone.spec.input_size
    model = g.model((3, size, size), 5, {"task": "t"})
    save_graph(model, tmp_path / "t.onnx")
    session = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        ref = net(x).numpy()
    assert np.abs(session.run(["logits"], {"input": x.numpy()})[0] - ref).max() < 1e-5
    external = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    used = len(net.units) - 1  # blocks run
    for b in range(1, backbone.num_units):
        in_graph = any(n.startswith(f"blocks.{b - 1}.") for n in external)
        assert in_graph == (b <= used and b not in spec.units)  # owned and unused units are not read


def test_early_stopping_ends_a_phase_and_keeps_the_best_epoch(monkeypatch, tmp_path):
    from tailorrt import training

    scores = iter([50.0, 60.0, 55.0, 54.0, 53.0, 99.0])
    monkeypatch.setattr(training, "accuracy", lambda *a, **k: next(scores))
    model = torch.nn.Linear(4, 2)
    seen = []

    def loss_fn(x, y):
        out = model(x)
        return torch.nn.functional.cross_entropy(out, y), out

    data = [(torch.randn(4), i % 2) for i in range(16)]
    trainer = Trainer(device=torch.device("cpu"))
    result = trainer.run(PhaseConfig("p", 10, 0.5, batch_size=8, patience=2), model, loss_fn, data, data,
                         on_epoch=lambda e: seen.append(model.weight.detach().clone()) or {})
    assert result.epochs == 4 and result.val_accuracy == 60.0  # epochs 3 and 4 did not beat epoch 2
    assert torch.equal(model.weight, seen[1])  # the model of epoch 2 is kept


# ---------------------------------------------------------------------------------------------- the real CLI

TRAIN = ("--head-epochs", "1", "--tune-epochs", "1", "--batch-size", "8")


@pytest.fixture(scope="module")
def methods_dir(exported_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported model dir plus 'colors' trained with four more methods, all exported again."""
    root = tmp_path_factory.mktemp("methods") / "m"
    shutil.copytree(exported_dir, root)
    spec = json.loads((root / "tasks" / "colors" / "task.json").read_text())["data"]["spec"]
    for method in ("fast-flex", "flex", "linear", "scale-shift", "finetune-last:1"):
        proc = run_cli("train", "--task", spec, "--model-dir", str(root), "--method", method, *TRAIN, check=True)
        assert method.split(":")[0] in proc.stdout
    run_cli("export", "--model-dir", str(root), check=True)
    return root


def test_methods_write_their_own_packs_with_selection_and_cost(methods_dir):
    names = sorted(p.name for p in (methods_dir / "tasks").iterdir())
    assert names == ["colors", "colors--fast-flex", "colors--finetune-last-1", "colors--flex", "colors--linear",
                     "colors--scale-shift", "hues"]
    for method in ("flex", "fast-flex"):
        meta = json.loads((methods_dir / "tasks" / f"colors--{method}" / "task.json").read_text())
        sel = meta["selection"]
        units = len(meta["tune"]["units"]) if sel["chosen_unit"] == "all" else 1
        assert meta["method"] == method and len(meta["tune"]["units"]) == units
        assert sorted(sel["candidate_scores"], key=int) == [str(u) for u in range(len(sel["candidate_scores"]))]
        assert sel["epochs"] == sum(s["epochs"] for s in sel["steps"]) and sel["seconds"] > 0
        trained = [s["step"] for s in sel["steps"] if s["step"].startswith("unit-")]
        assert len(trained) == (len(sel["candidate_scores"]) if method == "flex" else 1)
    linear = json.loads((methods_dir / "tasks" / "colors--linear" / "task.json").read_text())
    backbone = json.loads((methods_dir / "backbone" / "backbone.json").read_text())
    assert linear["files"]["task.safetensors"]["bytes"] < 0.01 * backbone["bytes"]


def test_every_method_exports_with_parity_and_serves_next_to_nettailor(methods_dir):
    manifest = json.loads((methods_dir / "onnx" / "export.json").read_text())
    assert len(manifest["tasks"]) == 7
    assert all(t["parity"]["max_abs_logit_diff"] <= 1e-4 for t in manifest["tasks"].values())
    torch_rt, onnx_rt = Runtime(methods_dir, backend="torch"), Runtime(methods_dir, backend="onnx")
    rng = np.random.default_rng(4)
    images = [class_image(i % 3, rng) for i in range(6)]
    for task in onnx_rt.tasks:
        x = onnx_rt.preprocess(task, images)
        a, b = torch_rt.logits(task, x), onnx_rt.logits(task, x)
        assert np.abs(a - b).max() <= 1e-4 and (a.argmax(1) == b.argmax(1)).all()
    methods = {onnx_rt.task(t).method for t in onnx_rt.tasks}
    assert {"nettailor", "fast-flex", "linear", "scale-shift"} <= methods
    with TestClient(create_app(onnx_rt)) as client:  # one server, tasks of every method
        for task in onnx_rt.tasks:
            r = client.post(f"/v1/tasks/{task}:predict", content=png_bytes(images[0]),
                            headers={"content-type": "image/png"})
            assert r.status_code == 200 and r.json()["label"] == onnx_rt.predict(task, images[0]).label


def test_unknown_method_is_a_one_line_error(methods_dir):
    line = one_line_error(run_cli("train", "--task", "synth-digits", "--model-dir", str(methods_dir),
                                  "--method", "finetune-last:99"))
    assert "finetune-last:99" in line


def test_compare_reuses_packs_trains_the_rest_and_writes_the_table(methods_dir, tmp_path):
    spec = json.loads((methods_dir / "tasks" / "colors" / "task.json").read_text())["data"]["spec"]
    out = tmp_path / "cmp"
    proc = run_cli("compare", "--task", spec, "--model-dir", str(methods_dir), "--methods",
                   "nettailor,linear,fast-flex,finetune-all", "--out", str(out), check=True, timeout=600)
    assert proc.stderr.count("reusing") == 3 and "training" in proc.stderr and "finetune-all" in proc.stderr
    result = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in result["methods"]}
    assert list(rows) == ["nettailor", "linear", "fast-flex", "finetune-all"] and result["reference"] == "finetune-all"
    assert rows["finetune-all"]["vs_finetune_all"] == 0
    assert rows["linear"]["task_params"] < rows["nettailor"]["task_params"]
    assert all(r["images_per_s"] > 0 and r["train_seconds"] > 0 and r["flops"] > 0 for r in rows.values())
    table = (out / "compare.md").read_text()
    assert table.count("\n| ") == 5 and "| method | test acc %" in table and table in proc.stdout.replace("\r", "")
    line = one_line_error(run_cli("compare", "--task", spec, "--model-dir", str(methods_dir), "--methods",
                                  "linear,attentionx"))
    assert "attentionx" in line
