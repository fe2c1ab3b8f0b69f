import pytest
import torch

from tailorrt.training.backbones import UniversalBackbone, get_spec
from tailorrt.training.methods.parts.student import Student


@pytest.fixture()
def backbone():
    torch.manual_seed(0)
    return UniversalBackbone(get_spec("tiny")).eval()


def test_alphas_favour_universal_and_sum_to_one(backbone):
    s = Student(backbone, 4, max_skip=3)
    for l, layer in enumerate(s.layers, start=1):
        a = layer.alphas()
        assert len(a) == 1 + min(3, l)
        assert torch.isclose(a.sum(), torch.tensor(1.0))
        assert a[0] == a.max()


def test_universal_weights_are_shared_frozen_and_bn_stats_private(backbone):
    s = Student(backbone, 4)
    u = s.layers[0].universal
    assert u.conv1.weight is backbone.blocks[0].conv1.weight
    assert not u.conv1.weight.requires_grad
    assert u.bn1.running_mean.data_ptr() != backbone.blocks[0].bn1.running_mean.data_ptr()
    trainable = {n for n, p in s.named_parameters() if p.requires_grad}
    assert trainable and all(("proxies" in n) or ("alpha" in n) or n.startswith("classifier") for n in trainable)
    s.train()
    before = backbone.blocks[0].bn1.running_mean.clone()
    s(torch.randn(4, 3, 16, 16))
    assert torch.equal(backbone.blocks[0].bn1.running_mean, before)
    assert not torch.equal(u.bn1.running_mean, before)


def test_expected_complexity_falls_as_universal_alpha_falls(backbone):
    s = Student(backbone, 4)
    c1 = float(s.expected_complexity().detach())
    with torch.no_grad():
        for layer in s.layers:
            layer.alpha_params[0] = -3.0
    c2 = float(s.expected_complexity().detach())
    assert c2 < c1
    s.expected_complexity().backward()
    assert all(layer.alpha_params.grad is not None for layer in s.layers)


def test_pruning_drops_blocks_keeps_a_path_and_renormalises(backbone):
    s = Student(backbone, 4)
    with torch.no_grad():
        for layer in s.layers:
            layer.alpha_params.zero_()  # uniform attention: every proxy at 1/(1+k)
    s.prune(universal_drop=2, proxy_threshold=0.2)
    assert sum(bool(layer.keep[0]) for layer in s.layers) == 1
    for layer in s.layers:
        a = layer.alphas()
        if layer.keep.any():
            assert torch.isclose(a.sum(), torch.tensor(1.0))
        assert torch.all(a[~layer.keep] == 0)
    logits = s(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 4)


def test_pruning_that_disconnects_is_refused(backbone):
    from tailorrt.errors import ConfigError

    s = Student(backbone, 4, max_skip=1)
    with pytest.raises(ConfigError, match="no path to the classifier"):
        s.prune(universal_drop=3, proxy_threshold=0.5)


def test_vanished_layer_cuts_readers_of_its_output(backbone):
    s = Student(backbone, 4, max_skip=1)
    with torch.no_grad():
        s.layers[0].keep[:] = False
    assert not s.settle()  # with max_skip=1 every later layer only reads the vanished one
    assert not s.layers[1].keep.any()
    wide = Student(backbone, 4, max_skip=3)
    with torch.no_grad():
        wide.layers[0].keep[:] = False
    assert wide.settle()  # layer 2 still reads the stem through a proxy
    assert not wide.layers[1].keep[0] and wide.layers[1].keep[2]
    assert wide(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_task_state_excludes_universal_weights_and_reloads_exactly(backbone):
    torch.manual_seed(1)
    s = Student(backbone, 5)
    s.train()
    for _ in range(3):
        s(torch.randn(8, 3, 16, 16))
    with torch.no_grad():
        for layer in s.layers:
            layer.alpha_params[1:] = torch.linspace(1.5, -1.0, len(layer.alpha_params) - 1)
    s.prune(universal_drop=1, proxy_threshold=0.1)
    assert not all(bool(layer.keep.all()) for layer in s.layers)
    s.compact()
    s.eval()
    state = s.task_state()
    assert not any(k.endswith("conv1.weight") and ".universal." in k for k in state)
    assert not any(k.startswith("stem.0.") for k in state)  # the stem conv belongs to the backbone
    fresh = Student(backbone, 5)
    fresh.load_task_state(state)
    fresh.eval()
    x = torch.randn(6, 3, 16, 16)
    assert torch.equal(fresh(x), s(x))
    n_task = sum(v.numel() for v in state.values())
    n_backbone = sum(p.numel() for p in backbone.parameters())
    assert n_task < n_backbone


def test_decathlon_student_owns_head_norm_statistics():
    torch.manual_seed(0)
    bb = UniversalBackbone(get_spec("wrn26")).eval()
    s = Student(bb, 3)
    s.train()
    s(torch.randn(4, 3, 72, 72))
    s.eval()
    state = s.task_state()
    assert "head_norm.running_mean" in state and "head_norm.weight" not in state
    fresh = Student(bb, 3)
    fresh.load_task_state(state)
    x = torch.randn(2, 3, 72, 72)
    assert torch.equal(fresh.eval()(x), s(x))


def test_local_targets_equal_the_outputs_and_train_only_their_own_layer(backbone):
    """Layer-local distillation: each local target has the unit output's value, and a loss on it reaches only its
    own layer's attention and proxies, with the gradients of recomputing the layer on detached inputs."""
    torch.manual_seed(0)
    s = Student(backbone, 4).eval()
    x = torch.randn(3, 3, 16, 16)
    _, outs = s.forward_all(x)
    _, local = s.forward_all(x, local=True)
    assert all(torch.allclose(o, t) for o, t in zip(outs, local))
    l = len(s.layers)  # the last layer: it reads proxies of earlier outputs
    local[l].square().mean().backward()
    touched = {n.split(".")[1] for n, p in s.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {str(l - 1)}
    expected = {n: p.grad.clone() for n, p in s.named_parameters() if p.grad is not None}
    s.zero_grad()
    recent = [o.detach() for o in outs[:-1][::-1][: len(s.layers[-1].proxies) + 1]]
    s.layers[-1](recent).square().mean().backward()
    assert all(torch.allclose(p.grad, expected[n]) for n, p in s.named_parameters() if p.grad is not None)


def test_owned_norms_train_privately_and_travel_in_the_task_state(backbone):
    """With own_norms the universal blocks' BN scale and shift are the task's: trainable, private (the backbone's
    stay as they were after a step), in task_state for kept blocks only, and reloaded exactly; their convolutions
    stay shared."""
    torch.manual_seed(2)
    s = Student(backbone, 4, own_norms=True)
    u, b = s.layers[0].universal, backbone.blocks[0]
    assert u.conv1.weight is b.conv1.weight and u.bn1.weight is not b.bn1.weight and u.bn1.weight.requires_grad
    before = b.bn1.weight.clone()
    opt = torch.optim.SGD([p for p in s.parameters() if p.requires_grad], lr=0.5)
    s.train()
    s(torch.randn(8, 3, 16, 16)).square().mean().backward()
    opt.step()
    assert torch.equal(b.bn1.weight, before) and not torch.equal(u.bn1.weight, before)
    s.prune(universal_drop=1, proxy_threshold=0.0)
    s.compact()
    s.eval()
    state = s.task_state()
    dropped = [l for l, layer in enumerate(s.layers) if not bool(layer.keep[0])]
    kept = [l for l, layer in enumerate(s.layers) if bool(layer.keep[0])]
    assert all(f"layers.{l}.universal.bn1.weight" in state for l in kept)
    assert not any(k.startswith(tuple(f"layers.{l}.universal." for l in dropped)) for k in state)
    assert not any(".universal." in k and "conv" in k for k in state)
    fresh = Student(backbone, 4, own_norms=True)
    fresh.load_task_state(state)
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(fresh.eval()(x), s(x))
    shared = Student(backbone, 4).accounting()["task_params"]
    owned = Student(backbone, 4, own_norms=True).accounting()["task_params"]
    assert owned - shared == sum(m.weight.numel() * 2 for blk in backbone.blocks for m in blk.modules()
                                 if isinstance(m, torch.nn.BatchNorm2d))


def test_a_task_state_cannot_write_into_the_backbone(backbone):
    """A state that carries a weight the network shares with the backbone (a universal conv, or a norm's scale
    when the task does not own its norms) is refused, and the backbone is left as it was."""
    from tailorrt.errors import PackError

    own = Student(backbone, 4, own_norms=True).eval()
    state = own.task_state()
    before = backbone.blocks[0].bn1.weight.clone()
    with torch.no_grad():
        state["layers.0.universal.bn1.weight"] = torch.zeros_like(before)
    with pytest.raises(PackError, match="belong to the backbone"):
        Student(backbone, 4).load_task_state(state)
    plain = Student(backbone, 4).eval().task_state()
    plain["layers.0.universal.conv1.weight"] = torch.zeros_like(backbone.blocks[0].conv1.weight)
    with pytest.raises(PackError, match="belong to the backbone"):
        Student(backbone, 4).load_task_state(plain)
    assert torch.equal(backbone.blocks[0].bn1.weight, before) and backbone.blocks[0].conv1.weight.abs().sum() > 0


def test_layer_distance_is_relative_where_block_outputs_are_linear():
    from tailorrt.errors import ConfigError
    from tailorrt.training.methods.nettailor import NetTailorConfig, _distill, relative_distance

    torch.manual_seed(0)
    students = {name: Student(UniversalBackbone(get_spec(name)).eval(), 3) for name in ("tiny", "tiny-mbconv")}
    auto = NetTailorConfig()
    assert auto.layer_distance == "auto"
    assert not relative_distance(auto, students["tiny"]) and relative_distance(auto, students["tiny-mbconv"])
    assert relative_distance(NetTailorConfig(layer_distance="relative"), students["tiny"])
    assert not relative_distance(NetTailorConfig(layer_distance="mse"), students["tiny-mbconv"])
    with pytest.raises(ConfigError, match="layer-distance"):
        NetTailorConfig(layer_distance="l1")
    # a config saved before the option trained with the squared distance, and resumes with it
    saved = {k: v for k, v in auto.to_json().items() if k != "layer_distance"}
    assert NetTailorConfig.from_json(saved).layer_distance == "mse"

    # relative: the layer terms do not change when the features (student's and teacher's) are 10x larger
    cfg = NetTailorConfig(distill_logit_weight=0.0)
    s_units, t_units = [None] + [torch.randn(2, 4, 3, 3) for _ in range(3)], [None] + [torch.randn(2, 4, 3, 3)
                                                                                      for _ in range(3)]
    logits = torch.zeros(2, 3)

    def term(scale: float, relative: bool) -> float:
        return float(_distill(cfg, logits, [None] + [u * scale for u in s_units[1:]], logits,
                              [None] + [u * scale for u in t_units[1:]], relative))

    assert term(10.0, True) == pytest.approx(term(1.0, True), rel=1e-5)
    assert term(10.0, False) == pytest.approx(100 * term(1.0, False), rel=1e-5)
