"""Methods other than NetTailor: what each task owns, graphs that match PyTorch, early stopping, and the real CLI
training several methods that export and serve side by side."""

from __future__ import annotations

import dataclasses
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
from tailorrt.errors import ConfigError, PackError
from tailorrt.records import AutoChoice, Budget
from tailorrt.serving.app import create_app
from tailorrt.serving.local import png_bytes
from tailorrt.training import methods, phases
from tailorrt.training.backbones import UniversalBackbone, get_spec
from tailorrt.training.io import load_tensors
from tailorrt.training.methods.channel_attention import AttentionRecord
from tailorrt.training.methods.flex import FlexSelection
from tailorrt.training.methods.parts.channel_scales import (
    AttentionConfig,
    AttentionMethod,
    attention_parameters,
    prune_by_scale,
)
from tailorrt.training.methods.parts.tuned_net import TunedNet, TuneSpec
from tailorrt.training.methods.tuning_method import emit_tuned
from tailorrt.training.onnx_graph import GraphBuilder, SharedWeights, save_graph
from tailorrt.training.packs import TrainingDir
from tailorrt.training.phases import PhaseConfig, Trainer
from tests.conftest import class_image, one_line_error, run_cli, run_clis
from tests.test_export import ALL_SPECS, SPECS, _randomise_bn

METHODS = ["linear", "linear:2", "finetune-last:2", "finetune-all", "scale-shift", "attention", "attention:filter",
           "adapters"]


def _backbone(spec=None, seed: int = 0) -> UniversalBackbone:
    torch.manual_seed(seed)
    backbone = UniversalBackbone(spec or get_spec("tiny")).eval()
    _randomise_bn(backbone, torch.Generator().manual_seed(seed))
    return backbone


def parse_method(name: str, num_units: int) -> TuneSpec:
    return methods.get(name).spec(name, num_units)


def _net(backbone: UniversalBackbone, spec: TuneSpec, seed: int = 1, method: str | None = None) -> TunedNet:
    """A tuned net (of ``method``'s kind) whose owned parts differ from the backbone (as after training)."""
    net = methods.get(method).network(backbone, 5, spec) if method else TunedNet(backbone, 5, spec)
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
    net = _net(backbone, spec, method=method)
    state = net.task_state()
    shared_ids = {id(p) for p in backbone.parameters()}
    for i, unit in enumerate(net.units):
        convs = [m for n, m in unit.named_modules() if isinstance(m, torch.nn.Conv2d) and not n.endswith("parallel")]
        owned = i in spec.units
        assert all((id(c.weight) in shared_ids) != owned for c in convs)  # shared convs ARE the backbone's
        assert any(k.startswith(f"units.{i}.") for k in state) == (owned or spec.bn == "affine")
    if method.startswith("linear"):
        assert set(state) == {"classifier.weight", "classifier.bias"}
    if method == "scale-shift" or method.startswith("attention"):
        assert not any(k.endswith("conv1.weight") or k.endswith("conv2.weight") for k in state)
    if method.startswith("attention"):
        scales = [k for k in state if k.endswith(".attention")]
        kind = torch.nn.BatchNorm2d if method == "attention" else torch.nn.Conv2d
        assert len(scales) == sum(isinstance(m, kind) for m in net.units.modules())
    if method == "linear:2":
        assert len(net.units) == 3  # the classifier reads unit 2; later units are not run
    if method == "adapters":  # a 1x1 beside each 3x3 convolution, and nothing else of a convolution's
        three = sum(tuple(m.kernel_size) == (3, 3) for n, m in net.units.named_modules()
                    if isinstance(m, torch.nn.Conv2d) and not n.endswith("parallel"))
        adapters = [k for k in state if k.endswith(".parallel.weight")]
        assert len(adapters) == three == net.adapters > 0
        assert all(state[k].shape[2:] == (1, 1) for k in adapters)
        assert not any(k.endswith("conv1.weight") or k.endswith("conv2.weight") for k in state)
    fresh = methods.get(method).network(backbone, 5, spec).eval()
    fresh.load_task_state(state)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))
    with pytest.raises(PackError, match="missing classifier.bias"):
        TunedNet(backbone, 5, spec).load_task_state({k: v for k, v in state.items() if k != "classifier.bias"})


def test_method_names_are_checked():
    spec = _backbone().spec
    n = spec.num_units
    assert methods.get("nettailor", spec).family == "nettailor" and methods.get("fast-flex", spec).family == "flex"
    for bad in ("finetune-last:0", f"finetune-last:{n + 1}", f"linear:{n}", "linear:x", "finetune-all:2",
                "nettailor:2", "adapters:1", "flexx"):
        with pytest.raises(ConfigError):
            methods.get(bad, spec)
    assert AttentionMethod.parse("attention:prune:l2") == AttentionMethod("channel", "l2", True)
    assert AttentionMethod.parse("attention:filter:distance-to-1") == AttentionMethod("filter", "distance-to-1")
    for bad in ("attention:l1:l2", "attention:filter:prune", "attention:x", "attention:prune:prune"):
        with pytest.raises(ConfigError):
            methods.get(bad, spec)


def test_attention_schedule_runs_and_letters():
    cfg = AttentionConfig(schedule="FFAABA")
    assert cfg.steps(prune=False) == [("F", 2), ("A", 2), ("B", 1), ("A", 1)]
    assert cfg.steps(prune=True) == [("F", 2), ("A", 2), ("B", 1), ("A", 1), ("P", 1), ("B", 1)]
    assert AttentionConfig(schedule="FAPPB").steps(prune=False) == [("F", 1), ("A", 1), ("B", 1)]
    for bad in ("FAX", ""):
        with pytest.raises(ConfigError, match="letters"):
            AttentionConfig(schedule=bad)


def test_attention_phases_train_what_their_letter_says():
    """A: scales and classifier move, batch-norm statistics and affine stay; B: the reverse for the scales."""
    from tailorrt.training.methods.channel_attention import set_trainable
    from tailorrt.training.methods.tuning_method import cross_entropy

    backbone = _backbone()
    net = TunedNet(backbone, 3, parse_method("attention", backbone.num_units))
    data = [(torch.randn(3, 16, 16), i % 3) for i in range(24)]
    trainer = Trainer(device=torch.device("cpu"))

    def snapshot():
        bns = [m for m in net.units.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        return ([m.running_mean.clone() for m in bns], [m.weight.detach().clone() for m in bns],
                [a.detach().clone() for a in attention_parameters(net)], net.classifier.weight.detach().clone())

    def changed(before, after):
        return [any(not torch.equal(a, b) for a, b in zip(x, y)) if isinstance(x, list) else not torch.equal(x, y)
                for x, y in zip(before, after)]

    for letter, expect in (("A", [False, False, True, True]), ("B", [True, True, False, True]),
                           ("F", [False, False, False, True])):
        set_trainable(net, letter)
        before = snapshot()
        trainer.run(PhaseConfig(letter, 1, 0.1, batch_size=8), net, cross_entropy(net), data, data)
        assert changed(before, snapshot()) == expect, letter


@pytest.mark.parametrize("kind", SPECS)
@pytest.mark.parametrize("variant", ["channel", "filter", "pruned"])
def test_attention_graphs_match_pytorch_and_pruning_shrinks_them(kind, variant, tmp_path):
    backbone = _backbone(SPECS[kind])
    net = _net(backbone, TuneSpec(bn="affine", attention="filter" if variant == "filter" else "channel"))
    full_flops = net.accounting(backbone.spec.input_size)["flops"]
    if variant == "pruned":  # switch off every other internal channel, then cut them out
        with torch.no_grad():
            for a in attention_parameters(net):
                a[::2] = 0.0
        x = torch.randn(2, 3, backbone.spec.input_size, backbone.spec.input_size)
        before = net(x)
        result = prune_by_scale(net.units, 0.01)
        assert result.pruned_channels > 0
        assert torch.allclose(net(x), before, atol=1e-5)  # a zero scale is an exact zero: pruning changes nothing
        assert net.accounting(backbone.spec.input_size)["flops"] < full_flops
        fresh = TunedNet(backbone, 5, net.spec).eval()
        fresh.load_task_state(net.task_state())  # the keep masks rebuild the pruned network
        assert torch.equal(fresh(x), net(x))
    external = _external_after_parity(backbone, net, tmp_path)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in backbone.modules())
    if variant == "channel":
        assert len(external) == convs  # every conv weight read from the shared file, scales folded away
    elif variant == "filter":
        assert not external  # every conv carries the task's filter scales: private
    else:
        ids = {id(p) for p in backbone.parameters()}
        still_shared = sum(isinstance(m, torch.nn.Conv2d) and id(m.weight) in ids for m in net.units.modules())
        assert 0 < still_shared < convs and len(external) == still_shared  # cut convs are private, smaller


def test_shared_units_keep_the_backbones_statistics_while_training():
    backbone = _backbone()
    net = TunedNet(backbone, 3, TuneSpec(units=(1,))).train()
    assert [u.training for u in net.units] == [i == 1 for i in range(len(net.units))]
    net = TunedNet(backbone, 3, TuneSpec(bn="affine")).train()
    assert all(u.training for u in net.units)


def _external_after_parity(backbone: UniversalBackbone, net: TunedNet, tmp_path: Path) -> set[str]:
    """Export ``net``, check its graph against PyTorch, and return the names it reads from the shared file."""
    shared = SharedWeights(backbone)
    shared.write(tmp_path / "universal.data")
    g = GraphBuilder("t", shared)
    emit_tuned(g, net)
    size = backbone.spec.input_size
    model = g.model((3, size, size), 5, {"task": "t"})
    save_graph(model, tmp_path / "t.onnx")
    session = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        ref = net(x).numpy()
    assert np.abs(session.run(["logits"], {"input": x.numpy()})[0] - ref).max() < 1e-5
    assert all(op.op_type != "Mul" for op in model.graph.node)  # every scale folded away
    return {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}


@pytest.mark.parametrize("kind", ALL_SPECS)
@pytest.mark.parametrize("spec", [TuneSpec(), TuneSpec(feature_unit=1), TuneSpec(units=(1,)), TuneSpec(units=(0, 2)),
                                  TuneSpec(bn="affine")], ids=["linear", "linear-1", "flex-1", "units-0-2", "ss"])
def test_tuned_graphs_match_pytorch_and_share_what_is_shared(kind, spec, tmp_path):
    backbone = _backbone(ALL_SPECS[kind])
    if spec.feature_unit is None and spec.units and max(spec.units) >= backbone.num_units:
        pytest.skip("backbone too short")
    net = _net(backbone, spec)
    external = _external_after_parity(backbone, net, tmp_path)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "t.onnx"), load_external_data=False).graph.node}
    # the backbone's own norms are folded into the shared weights: only a task with norms of its own has a pass
    assert ("BatchNormalization" in ops) == (spec.bn == "affine")
    used = len(net.units) - 1  # blocks run
    for b in range(1, backbone.num_units):
        in_graph = any(n.startswith(f"blocks.{b - 1}.") for n in external)
        assert in_graph == (b <= used and b not in spec.units)  # owned and unused units are not read


@pytest.mark.parametrize("kind", SPECS)
def test_adapter_graphs_match_pytorch_and_read_every_universal_conv(kind, tmp_path):
    backbone = _backbone(SPECS[kind])
    net = _net(backbone, TuneSpec(bn="affine"), method="adapters")
    assert any(p.abs().sum() > 0 for n, p in net.named_parameters() if n.endswith("parallel.weight"))
    external = _external_after_parity(backbone, net, tmp_path)
    assert external == {n for n in SharedWeights(backbone).tensors}  # every universal conv shared, none copied


def test_early_stopping_ends_a_phase_and_keeps_the_best_epoch(monkeypatch, tmp_path):

    scores = iter([50.0, 60.0, 55.0, 54.0, 53.0, 99.0])
    monkeypatch.setattr(phases, "accuracy", lambda *a, **k: next(scores))
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


REGISTERED = [name for m in methods.families() for name in m.examples if not m.default_pack]  # nettailor: 'colors'


@pytest.fixture(scope="module")
def methods_dir(exported_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported model dir plus 'colors' trained with the examples of every registered method, all exported."""
    root = tmp_path_factory.mktemp("methods") / "m"
    shutil.copytree(exported_dir, root)
    spec = json.loads((root / "tasks" / "colors" / "task.json").read_text())["data"]["spec"]
    extra = {"attention:prune": ("--attention-schedule", "FAB", "--prune-below", "1.0")}  # cut most channels
    procs = run_clis(*[("train", "--task", spec, "--model-dir", str(root), "--method", method, *TRAIN,
                        *extra.get(method, ())) for method in REGISTERED], check=True)
    for method, proc in zip(REGISTERED, procs):
        assert method.split(":")[0] in proc.stdout
    run_cli("export", "--model-dir", str(root), check=True)
    return root


def test_methods_write_their_own_packs_with_selection_and_cost(methods_dir):
    names = sorted(p.name for p in (methods_dir / "tasks").iterdir())
    assert names == sorted(["colors", "hues", *(f"colors--{m.replace(':', '-')}" for m in REGISTERED)])
    for method in ("flex", "fast-flex"):
        meta = json.loads((methods_dir / "tasks" / f"colors--{method}" / "task.json").read_text())
        sel = meta["selection"]
        units = len(meta["tune"]["units"]) if sel["chosen_unit"] == "all" else 1
        assert meta["method"] == method and len(meta["tune"]["units"]) == units
        assert sorted(sel["candidate_scores"], key=int) == [str(u) for u in range(len(sel["candidate_scores"]))]
        assert sel["epochs"] == sum(s["epochs"] for s in sel["steps"]) and sel["seconds"] > 0
        trained = [s["step"] for s in sel["steps"] if s["step"].startswith("unit-")]
        assert len(trained) == (len(sel["candidate_scores"]) if method == "flex" else 1)
        assert FlexSelection.from_json(sel).to_json() == sel  # written from the object it reads back as
    att = json.loads((methods_dir / "tasks" / "colors--attention-prune" / "task.json").read_text())
    rec = att["attention"]
    assert AttentionRecord.from_json(rec).to_json() == rec
    assert [s["step"] for s in rec["steps"]] == ["1-F", "2-A", "3-B", "4-P", "5-B"]
    pruning = rec["pruning"]
    assert 0 < pruning["pruned_channels"] == att["metrics"]["pruned_channels"] < pruning["prunable_channels"]
    assert all("attention" in row for p in att["training"]["phases"] for row in p["history"])
    ss = json.loads((methods_dir / "tasks" / "colors--scale-shift" / "task.json").read_text())
    assert att["metrics"]["flops"] < ss["metrics"]["flops"]
    linear = json.loads((methods_dir / "tasks" / "colors--linear" / "task.json").read_text())
    backbone = json.loads((methods_dir / "backbone" / "backbone.json").read_text())
    assert linear["files"]["task.safetensors"]["bytes"] < 0.01 * backbone["bytes"]


def test_every_method_exports_with_parity_and_serves_next_to_nettailor(methods_dir):
    manifest = json.loads((methods_dir / "onnx" / "export.json").read_text())
    assert len(manifest["tasks"]) == len(REGISTERED) + 2
    assert all(t["parity"]["max_abs_logit_diff"] <= 1e-4 for t in manifest["tasks"].values())
    mdir = TrainingDir(methods_dir)
    backbone, bmeta = mdir.load_backbone()
    for task in mdir.task_names():  # every pack round-trips exactly: what loads is what was written
        model, _ = mdir.load_model(task, backbone, bmeta.sha256)
        saved, state = load_tensors(methods_dir / "tasks" / task / "task.safetensors"), model.task_state()
        assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved), task
    torch_rt, onnx_rt = Runtime(methods_dir, backend="torch"), Runtime(methods_dir, backend="onnx")
    rng = np.random.default_rng(4)
    images = [class_image(i % 3, rng) for i in range(6)]
    for task in onnx_rt.tasks:
        x = onnx_rt.preprocess(task, images)
        a, b = torch_rt.logits(task, x), onnx_rt.logits(task, x)
        assert np.abs(a - b).max() <= 1e-4 and (a.argmax(1) == b.argmax(1)).all()
    served = {methods.get(onnx_rt.task(t).method).family for t in onnx_rt.tasks}
    assert served == {m.family for m in methods.families()}  # every registered family, in one runtime
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


def test_auto_picks_the_smallest_pack_within_the_budget_and_records_why(exported_dir, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(exported_dir, root)
    spec = json.loads((root / "tasks" / "hues" / "task.json").read_text())["data"]["spec"]
    args = ("train", "--task", spec, "--model-dir", str(root), "--method", "auto", "--candidates",
            "linear,scale-shift,adapters", *TRAIN, "--max-drop", "5")
    proc = run_cli(*args, check=True)
    meta = json.loads((root / "tasks" / "hues" / "task.json").read_text())
    record = meta["auto"]
    rows = {r["method"]: r for r in record["candidates"]}
    assert list(rows) == ["linear", "scale-shift", "adapters"] and meta["method"] == record["winner"]
    best = max(r["val_accuracy"] for r in rows.values())
    fits = [r for r in rows.values() if r["val_accuracy"] >= best - 5]
    assert record["winner"] == min(fits, key=lambda r: (r["pack_bytes"], -r["val_accuracy"]))["method"]
    assert all(bool(r["misses"]) == (r not in fits) for r in rows.values())
    packed = (root / "tasks" / "hues" / "task.safetensors").stat().st_size
    assert abs(packed - rows[record["winner"]]["pack_bytes"]) < 200  # same tensors (the file adds a little metadata)
    assert record["total_seconds"] == pytest.approx(record["search_seconds"] + record["final_seconds"], abs=0.02)
    assert "auto" in proc.stdout and "(auto)" in run_cli("info", "--model-dir", str(root), check=True).stdout
    page = (Path(run_cli("report", "--model-dir", str(root), check=True).stdout.split()[-1])).read_text()
    assert "Chosen by --method auto" in page and record["reason"].split(";")[0] in page
    proc = run_cli(*args[:-2], "--max-drop", "100", "--max-pack-mb", "0.000001")  # only the pack limit is missed
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no candidate meets the budget; the closest is "
                                                           "linear (pack 0.00")
    assert json.loads((root / "tasks" / "hues" / "task.json").read_text()) == meta  # the pack is kept


def _auto_with_nettailor_saying(verdict: dict) -> tuple[dict, dict]:
    """``auto.choose`` between a NetTailor with the smaller pack whose metrics carry ``verdict`` and a linear probe."""
    from torch import nn

    from tailorrt.training import auto
    from tailorrt.training.methods import Trained

    def train(name):
        net = nn.Linear(4, 2) if name == "nettailor" else nn.Linear(64, 2)
        net.task_state = net.state_dict
        metrics = {"accuracy": 80.0, "flops": 10, **(verdict if name == "nettailor" else {})}
        return Trained(net, metrics, []), 80.0

    choice = auto.choose(["nettailor", "linear"], Budget(max_drop=5), train)
    record = json.loads(json.dumps(choice.to_json()))  # as task.json holds it
    assert AutoChoice.from_json(record) == choice
    rows = {r["method"]: r for r in record["candidates"]}
    assert rows["nettailor"]["pack_bytes"] < rows["linear"]["pack_bytes"]
    return record, rows


def test_auto_does_not_pick_blindly_a_method_that_found_itself_short():
    """NetTailor that could not match its teacher (``metrics.shortfall``) misses the budget, however small its pack;
    one whose split could not tell (``metrics.caveat``) may win, and the reason says what it could not tell."""
    short = "-2.30 ± 0.80 points vs the teacher; NetTailor could not match the teacher here"
    record, rows = _auto_with_nettailor_saying({"shortfall": short})
    assert record["winner"] == "linear" and rows["nettailor"]["misses"] == [short] and not rows["linear"]["misses"]
    unsure = "-0.30 ± 2.05 points vs the teacher; 1,000 images cannot tell 0.5 points from noise"
    record, rows = _auto_with_nettailor_saying({"caveat": unsure})
    assert record["winner"] == "nettailor" and not rows["nettailor"]["misses"] and record["reason"].endswith(unsure)


def test_a_run_saved_by_the_previous_version_resumes_with_the_config_it_saved():
    """Before the registry, request.json held the NetTailor config as 'config' and the others' as 'transfer'."""
    from tailorrt.training.methods.nettailor import NetTailorConfig
    from tailorrt.training.methods.tuning_method import TransferConfig
    from tailorrt.training.train import TrainRequest

    nettailor, others = NetTailorConfig(max_skip=2), TransferConfig.quick()
    old = {"task": "synth-digits", "model_dir": "runs", "backbone": None, "backbone_weights": None,
           "random_init": False, "data_dir": "data", "download": True, "seed": 0, "config": nettailor.to_json(),
           "transfer": others.to_json()}
    assert TrainRequest.from_json({**old, "method": "nettailor"}).config(methods.get("nettailor")) == nettailor
    req = TrainRequest.from_json({**old, "method": "scale-shift"})
    assert req.config(methods.get("scale-shift")) == others
    assert TrainRequest.from_json(req.to_json()) == req  # and the new format round-trips
    saved = {k: v for k, v in nettailor.to_json().items() if k not in ("local_distill", "tolerance")}
    before_search = {**old, "method": "nettailor", "config": {**saved, "max_val_drop": 1.0}}
    resumed = TrainRequest.from_json(before_search).config(methods.get("nettailor"))
    assert resumed == dataclasses.replace(nettailor, local_distill=False)  # its student trains as it did
