import urllib.error

import pytest
import torch
import torchvision

from tailorrt.errors import CheckpointError, ConfigError
from tailorrt.training import backbones
from tailorrt.training.backbones import UniversalBackbone, build_backbone, embedded_weights_path, get_spec
from tailorrt.training.io import save_tensors


def test_every_backbone_builds_and_splits_into_units():
    names = backbones.BACKBONES.names()
    assert {"resnet18", "wrn26", "embedded", "tiny", "efficientnet-lite0", "tiny-mbconv"} <= set(names)
    for name in names:
        spec = get_spec(name)
        model = UniversalBackbone(spec).eval()
        assert model.num_units == 1 + sum(spec.depths), name
        x = torch.zeros(1, 3, min(spec.input_size, 64), min(spec.input_size, 64))
        outs = model.forward_units(x)
        assert len(outs) == model.num_units and outs[-1].shape[1] == spec.widths[-1] * spec.family.expansion, name
        assert model.features(outs[-1]).shape == (1, model.feature_dim) == (1, spec.feature_dim), name


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown backbone"):
        get_spec("vgg99")


@pytest.mark.parametrize("arch,suffix", [("resnet18", ".pth"), ("resnet18", ".safetensors"), ("resnet50", ".pth")])
def test_torchvision_checkpoint_maps_onto_units(tmp_path, arch, suffix):
    ref = getattr(torchvision.models, arch)(weights=None).eval()
    path = tmp_path / f"{arch}{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": ref.state_dict()}, path)
    else:
        save_tensors(path, ref.state_dict())
    model, source = build_backbone(arch, weights=path)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    ref.fc = torch.nn.Identity()
    assert source.kind == "file"
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit backbone 'resnet34'.*missing"):
        build_backbone("resnet34", weights=path)


def test_corrupt_and_pickled_code_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        build_backbone("tiny", weights=bad)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="weights-only") as e:
        build_backbone("tiny", weights=evil)
    assert "\n" not in str(e.value)  # one line, not torch's page of advice


def test_offline_torchvision_download_is_a_clear_error(monkeypatch):
    def offline(self, *a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(CheckpointError, match="--backbone-weights"):
        build_backbone("resnet18")


def test_embedded_backbone_is_shipped_small_and_loads():
    path = embedded_weights_path()
    assert path.is_file() and path.stat().st_size <= 20 * 2**20
    model, source = build_backbone(backbones.EMBEDDED)
    assert source.kind == "embedded"
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_decathlon_wrn26_checkpoint_names_map_onto_units(tmp_path):
    """NetTailor's wide_resnet26.pth.tar names: conv1, bn1, layers.N.*, ends_bn, linear (dropped)."""
    torch.manual_seed(0)
    ours = UniversalBackbone(get_spec("wrn26")).eval()
    renames = (("stem.0.", "conv1."), ("stem.1.", "bn1."), ("blocks.", "layers."), ("head_norm.", "ends_bn."))
    theirs = {}
    for k, v in ours.state_dict().items():
        for a, b in renames:
            if k.startswith(a):
                k = b + k[len(a):]
                break
        theirs[k] = v
    theirs["linear.weight"] = torch.zeros(10, 256)
    path = tmp_path / "wide_resnet26.pth.tar"
    torch.save({"state_dict": theirs, "epoch": 1}, path)
    loaded, _ = build_backbone("wrn26", weights=path)
    x = torch.randn(2, 3, 72, 72)
    assert torch.equal(loaded.eval()(x), ours(x))
    outs = ours.forward_units(x)
    assert [o.shape[1] for o in outs[1:]] == [64] * 4 + [128] * 4 + [256] * 4 and outs[-1].shape[-1] == 9
    assert not any("downsample" in k for k in ours.state_dict())  # avg-pool + zero-pad shortcuts


def test_the_specs_expansions_are_the_blocks():
    """``backbone_spec`` (no torch) knows each block kind's expansion; it must be the block's own."""
    from tailorrt.backbone_spec import BLOCK_FAMILIES
    from tailorrt.training.backbones import BLOCKS

    assert {name: f.expansion for name, f in BLOCK_FAMILIES.items()} == {name: block.expansion
                                                                       for name, block in BLOCKS.items()}
