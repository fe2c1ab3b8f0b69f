"""The NetTailor student network.

Unit outputs are ``u_0`` (the stem) and ``u_1..u_L`` (one per layer). Layer ``l`` computes
``relu(sum_i alpha_i * B_i(input_i))`` where ``B_0`` is the frozen universal block on
``u_{l-1}`` and proxy ``j`` (``B_{j+1}``) is a cheap block on ``u_{l-1-j}``, for the last
``max_skip`` outputs. ``alpha = softmax(alpha_params)`` over the blocks still kept.

Universal convolutions and BN affine weights are *shared* with the backbone object (the same
``Parameter`` objects, frozen); universal BN running statistics are private per task. The task
owns exactly what :meth:`Student.task_state` returns.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tailorrt.errors import ConfigError, PackError
from tailorrt.training.backbones import UniversalBackbone, pool
from tailorrt.training.flops import count_flops, count_params


def share_frozen(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are the *same* frozen tensors and whose buffers are private."""
    memo = {id(p): p for p in module.parameters()}
    clone = copy.deepcopy(module, memo)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def share_frozen_own_norms(module: nn.Module) -> nn.Module:
    """:func:`share_frozen`, except that every batch norm's scale and shift is a private, trainable copy."""
    clone = share_frozen(module)
    for m in clone.modules():
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            m.weight = nn.Parameter(m.weight.detach().clone())
            m.bias = nn.Parameter(m.bias.detach().clone())
    return clone


def norm_affine(module: nn.Module) -> dict[str, torch.Tensor]:
    """The scale and shift of every batch norm in ``module``, by name."""
    return {f"{n}.{k}": getattr(m, k) for n, m in module.named_modules()
            if isinstance(m, nn.BatchNorm2d) and m.affine for k in ("weight", "bias")}



@dataclass(frozen=True)
class Block:
    """One block of a student's layer as its record keeps it (``architecture`` of a NetTailor task)."""

    kind: str  # universal (the backbone's block) or proxy (the task's)
    reads: int  # the layer output it reads (0: the stem's)
    kept: bool
    alpha: float  # its attention weight
    params: int
    flops: int


@dataclass(frozen=True)
class LayerBlocks:
    """A student's layer: its number (from 1) and its blocks, the universal one first."""

    layer: int
    blocks: tuple[Block, ...]

    @staticmethod
    def to_json(layers: tuple[LayerBlocks, ...]) -> list[dict]:
        return [asdict(layer) for layer in layers]

    @staticmethod
    def from_json(data: list[dict]) -> tuple[LayerBlocks, ...]:
        return tuple(LayerBlocks(layer["layer"], tuple(Block(**b) for b in layer["blocks"])) for layer in data)

class SharedConv2d(nn.Conv2d):
    """A convolution like ``conv`` whose weight and bias *are* ``conv``'s Parameters (the backbone's, shared and
    frozen): subclasses add what the task owns beside them."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        self.weight = conv.weight
        self.bias = conv.bias


class Proxy(nn.Module):
    """A cheap task block: max-pool for stride, then 1x1 conv + BN (two 1x1 with a bottleneck for ResNet50)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, bottleneck: bool = False) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(stride + 1, stride, stride // 2) if stride > 1 else nn.Identity()
        if bottleneck:
            mid = max(out_ch // 32, 16)
            self.body = nn.Sequential(nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                                      nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        else:
            self.body = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.pool(x))


class TailorLayer(nn.Module):
    """One universal block plus proxies from the previous ``len(proxies)`` unit outputs."""

    def __init__(self, universal: nn.Module, proxies: list[nn.Module], costs: list[tuple[int, int]], *,
                 linear: bool = False) -> None:
        super().__init__()
        self.linear = linear  # the blocks' outputs are linear (MBConv): combined as they are, without a ReLU
        self.universal = universal
        self.proxies = nn.ModuleList(proxies)
        n = 1 + len(proxies)
        self.alpha_params = nn.Parameter(torch.tensor([2.0] + [-2.0] * len(proxies)))
        self.register_buffer("keep", torch.ones(n, dtype=torch.bool))
        self.costs = costs  # (params, flops) per block, universal first

    def alphas(self) -> torch.Tensor:
        """Softmax over kept blocks; pruned blocks get exactly 0."""
        logits = self.alpha_params.masked_fill(~self.keep, float("-inf"))
        if not bool(self.keep.any()):
            return torch.zeros_like(self.alpha_params)
        return torch.softmax(logits, 0)

    def forward(self, inputs: list[torch.Tensor | None]) -> torch.Tensor | None:
        """``inputs[j]`` is ``u_{l-1-j}`` (None if that layer vanished)."""
        return self.combine(self.blocks(inputs)[0])

    def blocks(self, inputs: list[torch.Tensor | None]) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Each block's output before its attention weight, and each proxy's pooled input (for :meth:`local`);
        None where a block is pruned or has no input."""
        ys: list[torch.Tensor | None] = []
        pooled: list[torch.Tensor | None] = []
        for i, kept in enumerate(self.keep.tolist()):
            src = inputs[max(i - 1, 0)]
            q = None if not kept or src is None or i == 0 else self.proxies[i - 1].pool(src)
            pooled.append(q)
            ys.append(None if not kept or src is None else self.universal(src) if i == 0 else
                      self.proxies[i - 1].body(q))
        return ys, pooled

    def combine(self, ys: list[torch.Tensor | None]) -> torch.Tensor | None:
        """``relu(sum_i alpha_i * y_i)`` over the blocks that have an output (the sum alone where :attr:`linear`)."""
        alphas = self.alphas()
        out = None
        for i, y in enumerate(ys):
            if y is not None:
                out = alphas[i] * y if out is None else out + alphas[i] * y
        return out if out is None or self.linear else F.relu(out)

    def local(self, ys: list[torch.Tensor | None], pooled: list[torch.Tensor | None]) -> torch.Tensor | None:
        """The layer's output as computed from *detached* inputs, given what :meth:`blocks` returned for the same
        inputs: gradients through it reach this layer's attention and proxies, nothing upstream. Only what has
        trainable parameters is computed again: the universal block's output and the proxies' max-pools are
        reused, detached."""
        return self.combine([None if y is None else y.detach() if i == 0 else self.proxies[i - 1].body(q.detach())
                             for i, (y, q) in enumerate(zip(ys, pooled))])


class Student(nn.Module):
    """Frozen universal blocks + trainable proxies, block attention and a classifier. With ``own_norms``, the
    task also owns (and trains) the scale and shift of the universal blocks' batch norms; their convolutions stay
    shared."""

    def __init__(self, backbone: UniversalBackbone, num_classes: int, *, max_skip: int = 3,
                 own_norms: bool = False) -> None:
        super().__init__()
        spec = backbone.spec
        self.max_skip = max_skip
        self.own_norms = own_norms
        self.linear_outputs = spec.linear_output  # the blocks' outputs are linear (MBConv): no ReLU bounds their scale
        universal = share_frozen_own_norms if own_norms else share_frozen
        self.stem = share_frozen(backbone.stem)
        bottleneck = spec.block == "bottleneck"
        with torch.no_grad():
            backbone.eval()
            outs = backbone.forward_units(torch.zeros(1, 3, spec.input_size, spec.input_size))
        self.shapes = [tuple(o.shape[1:]) for o in outs]
        self.stem_cost = (count_params(backbone.stem), count_flops(backbone.stem, torch.zeros(1, 3, spec.input_size,
                                                                                          spec.input_size)))
        layers = []
        for l, block in enumerate(backbone.blocks, start=1):
            target = self.shapes[l]
            costs = [(count_params(block), count_flops(block, torch.zeros(1, *self.shapes[l - 1])))]
            proxies = []
            for j in range(min(max_skip, l)):
                src = self.shapes[l - 1 - j]
                proxy = Proxy(src[0], target[0], -(-src[1] // target[1]), bottleneck)  # ceil: odd sizes too
                costs.append((count_params(proxy), count_flops(proxy, torch.zeros(1, *src))))
                proxies.append(proxy)
            layers.append(TailorLayer(universal(block), proxies, costs, linear=spec.linear_output))
        self.layers = nn.ModuleList(layers)
        self.head_norm = share_frozen(backbone.head_norm)
        self.classifier = nn.Linear(backbone.feature_dim, num_classes)
        self.head_cost = (count_params(self.classifier), backbone.feature_dim * num_classes)
        for m in self.layers.modules():
            if isinstance(m, Proxy):
                for c in m.modules():
                    if isinstance(c, nn.Conv2d):
                        nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")

    # ------------------------------------------------------------------ forward

    def forward_all(self, x: torch.Tensor, *, local: bool = False
                    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Logits and every unit output (None where a layer vanished). With ``local``, the layer outputs returned
        are those computed from *detached* inputs (:meth:`TailorLayer.local`; the reference's layer-local
        distillation: a distance to the teacher there trains each layer's own blocks and nothing upstream); the
        logits are the network's."""
        outs: list[torch.Tensor | None] = [self.stem(x)]
        targets: list[torch.Tensor | None] = [outs[0]]
        for layer in self.layers:
            recent = outs[::-1][: len(layer.proxies) + 1]
            ys, pooled = layer.blocks(recent)
            outs.append(layer.combine(ys))
            if local:
                targets.append(layer.local(ys, pooled))
        if outs[-1] is None:
            raise PackError("the pruned network has no path to the classifier")
        return self.classifier(pool(self.head_norm(outs[-1]))), targets if local else outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]

    def attention_parameters(self) -> list[nn.Parameter]:
        """The block-attention logits of every layer."""
        return [layer.alpha_params for layer in self.layers]

    # ------------------------------------------------------------------ complexity

    def total_flops_dense(self) -> int:
        """FLOPs of the universal network alone (the normaliser of the complexity term)."""
        return self.stem_cost[1] + sum(layer.costs[0][1] for layer in self.layers)

    def expected_complexity(self) -> torch.Tensor:
        """Each block's FLOP share weighted by the chance it stays in use, minus the chance that its
        input (all blocks of the feeding layer off) or its output (all readers off) is unused."""
        total = float(self.total_flops_dense())
        alphas = [layer.alphas() for layer in self.layers]
        one = torch.ones((), device=alphas[0].device)
        # P(layer l's own blocks are all off) and P(nobody reads u_l)
        p_in_clear = [torch.prod(1 - a) for a in alphas]
        readers: list[list[torch.Tensor]] = [[] for _ in range(len(self.layers) + 1)]
        for l, a in enumerate(alphas, start=1):
            for i in range(len(a)):
                readers[l - 1 - max(i - 1, 0)].append(a[i])
        p_out_clear = [torch.prod(1 - torch.stack(r)) if r else one * 0 for r in readers]
        c = torch.zeros((), device=alphas[0].device)
        for l, (layer, a) in enumerate(zip(self.layers, alphas), start=1):
            p_in = p_in_clear[l - 2] if l > 1 else one * 0
            p_out = p_out_clear[l] if l < len(self.layers) else one * 0
            for i, (_, flops) in enumerate(layer.costs):
                c = c + (flops / total) * (a[i] - p_in - p_out)
        return c

    # ------------------------------------------------------------------ pruning

    def settle(self) -> bool:
        """Remove, to a fixed point, what cannot contribute: blocks whose input vanished (*input exclusion*: a
        layer with nothing left disappears, and so do the blocks that read it) and the blocks of a layer whose
        output no kept block reads (*output exclusion*; the classifier reads the last layer). Returns whether the
        classifier still has an input."""
        n = len(self.layers)
        changed = True
        with torch.no_grad():
            while changed:
                changed = False
                alive = [True]  # u_0, the stem's output, exists
                for l, layer in enumerate(self.layers, start=1):
                    for i in range(len(layer.keep)):
                        if layer.keep[i] and not alive[l - 1 - max(i - 1, 0)]:
                            layer.keep[i] = False
                            changed = True
                    alive.append(bool(layer.keep.any()))
                read = [False] * n + [True]
                for l, layer in enumerate(self.layers, start=1):
                    for i in range(len(layer.keep)):
                        if layer.keep[i]:
                            read[l - 1 - max(i - 1, 0)] = True
                for l, layer in enumerate(self.layers, start=1):
                    if not read[l] and bool(layer.keep.any()):
                        layer.keep[:] = False
                        changed = True
        return n == 0 or bool(self.layers[-1].keep.any())

    def mark(self, *, universal_drop: int = 0, proxy_threshold: float = 0.05, proxy_relative: float = 0.0) -> bool:
        """Unkeep the ``universal_drop`` universal blocks with the lowest alpha and every proxy whose alpha is below
        ``proxy_threshold`` or below ``proxy_relative`` times the strongest proxy of its layer, then :meth:`settle`;
        returns whether the classifier still has an input."""
        with torch.no_grad():
            alphas = [layer.alphas().clone() for layer in self.layers]
            for l in self.universal_order()[:universal_drop]:
                self.layers[l].keep[0] = False
            for layer, a in zip(self.layers, alphas):
                best = float(a[1:].max()) if len(a) > 1 else 0.0
                for i in range(1, len(a)):
                    if a[i] < proxy_threshold or a[i] < proxy_relative * best:
                        layer.keep[i] = False
        return self.settle()

    def prune(self, *, universal_drop: int = 0, proxy_threshold: float = 0.05, proxy_relative: float = 0.0) -> None:
        """:meth:`mark`, refusing a pruning that leaves the classifier without an input."""
        if not self.mark(universal_drop=universal_drop, proxy_threshold=proxy_threshold,
                         proxy_relative=proxy_relative):
            raise ConfigError(f"pruning {universal_drop} universal blocks and proxies below {proxy_threshold} "
                              "leaves no path to the classifier; prune fewer blocks or lower the threshold")

    def universal_order(self) -> list[int]:
        """Layer indices of kept universal blocks, lowest alpha first."""
        kept = [l for l, layer in enumerate(self.layers) if bool(layer.keep[0])]
        return sorted(kept, key=lambda l: float(self.layers[l].alphas()[0].detach()))

    def compact(self) -> None:
        """Free the modules of pruned blocks (they are never run again)."""
        for layer in self.layers:
            if not bool(layer.keep[0]):
                layer.universal = nn.Identity()
            for j in range(len(layer.proxies)):
                if not bool(layer.keep[j + 1]):
                    layer.proxies[j] = nn.Identity()

    # ------------------------------------------------------------------ accounting & state

    def architecture(self) -> tuple[LayerBlocks, ...]:
        """Per layer: every block with kept flag, alpha, params and FLOPs (the kept architecture)."""
        rows = []
        for l, layer in enumerate(self.layers, start=1):
            a = layer.alphas().detach().cpu().tolist()
            blocks = tuple(Block("universal" if i == 0 else "proxy", l - 1 - max(i - 1, 0), bool(layer.keep[i]),
                                 round(a[i], 6), params, flops)
                           for i, (params, flops) in enumerate(layer.costs))
            rows.append(LayerBlocks(l, blocks))
        return tuple(rows)

    def accounting(self) -> dict:
        """Task-owned and shared parameters used, and FLOPs of the kept network."""
        shared, task, flops = self.stem_cost[0], self.head_cost[0], self.stem_cost[1] + self.head_cost[1]
        kept_universal = kept_proxies = 0
        for layer in self.layers:
            task += layer.alpha_params.numel()
            for i, (params, f) in enumerate(layer.costs):
                if bool(layer.keep[i]):
                    flops += f
                    if i == 0:
                        owned = self._owned_norm_params(layer)
                        shared += params - owned
                        task += owned
                        kept_universal += 1
                    else:
                        task += params
                        kept_proxies += 1
        return {"task_params": int(task), "shared_params_used": int(shared), "flops": int(flops),
                "universal_blocks_kept": kept_universal, "universal_blocks_total": len(self.layers),
                "proxies_kept": kept_proxies, "proxies_total": sum(len(layer.proxies) for layer in self.layers)}

    def _owned_norm_params(self, layer: TailorLayer) -> int:
        return sum(t.numel() for t in norm_affine(layer.universal).values()) if self.own_norms else 0

    def task_state(self) -> dict[str, torch.Tensor]:
        """Exactly what the task owns: universal BN statistics (stem, kept blocks, head norm; with ``own_norms``
        the kept blocks' BN scale and shift too), kept proxies, attention parameters, keep flags and the
        classifier. Universal weights are excluded by structure."""
        state: dict[str, torch.Tensor] = {}
        for n, b in self.stem.named_buffers():
            state[f"stem.{n}"] = b
        for l, layer in enumerate(self.layers):
            state[f"layers.{l}.alpha_params"] = layer.alpha_params
            state[f"layers.{l}.keep"] = layer.keep
            if bool(layer.keep[0]):
                for n, b in layer.universal.named_buffers():
                    state[f"layers.{l}.universal.{n}"] = b
                if self.own_norms:
                    for n, t in norm_affine(layer.universal).items():
                        state[f"layers.{l}.universal.{n}"] = t
            for j, proxy in enumerate(layer.proxies):
                if bool(layer.keep[j + 1]):
                    for n, t in proxy.state_dict().items():
                        state[f"layers.{l}.proxies.{j}.{n}"] = t
        for n, b in self.head_norm.named_buffers():
            state[f"head_norm.{n}"] = b
        for n, t in self.classifier.state_dict().items():
            state[f"classifier.{n}"] = t
        return {k: v.detach().clone() for k, v in state.items()}

    def load_task_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`task_state`; the result is compacted. Raises PackError on any mismatch."""
        own = self.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise PackError(f"task weights do not fit this network: unexpected {', '.join(unknown[:3])}")
        bad = [k for k, v in state.items() if own[k].shape != v.shape]
        if bad:
            raise PackError(f"task weights do not fit this network: wrong shape for {', '.join(bad[:3])}")
        with torch.no_grad():
            for l, layer in enumerate(self.layers):
                layer.keep.copy_(state[f"layers.{l}.keep"])
        needed = set(self.task_state())
        missing = sorted(needed - set(state))
        if missing:
            raise PackError(f"task weights are incomplete: missing {', '.join(missing[:3])}")
        # a key the task does not own (a universal weight, or a norm's scale this network shares) would be
        # written into the backbone's shared tensors, under every other task
        foreign = sorted(set(state) - needed)
        if foreign:
            raise PackError(f"task weights do not fit this network: {', '.join(foreign[:3])} belong to the backbone")
        self.load_state_dict(state, strict=False)
        self.compact()
