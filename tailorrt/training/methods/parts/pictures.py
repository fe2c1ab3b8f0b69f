"""The report's pictures of what tailoring did to a network, drawn by the methods (matplotlib figures).

- NetTailor: one node per layer output, each layer's universal block in gray and its task-specific
  (proxy) blocks in blue, drawn as arcs from the layer output they read; the opacity is the block's final
  attention weight (alpha) and pruned blocks are absent. Its alphas over training, one panel per layer.
- The tuning methods: the chain of backbone units, gray where shared and blue where the task owns a copy;
  for channel attention the opacity is the unit's mean attention scale, drawn over training too.
"""

from __future__ import annotations

from typing import Any

from tailorrt.records import TaskRecord
from tailorrt.training.methods.parts.channel_scales import UnitScales
from tailorrt.training.methods.parts.selection import SearchRecord
from tailorrt.training.methods.parts.student import LayerBlocks
from tailorrt.training.methods.parts.tuned_net import UnitUse

GRAY, BLUE = "#7f7f7f", "#1f77b4"
MIN_OPACITY = 0.08  # a kept block whose weight is near 0 is still drawn faintly


def opacity(weight: float) -> float:
    return max(MIN_OPACITY, min(1.0, float(weight)))


def nettailor_architecture(plt, layers: tuple[LayerBlocks, ...]) -> Any:
    from matplotlib.patches import FancyBboxPatch

    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 1.5), 3.2), dpi=110)
    for i in range(n + 1):  # layer outputs (0 is the stem's)
        ax.plot(i, 0, "o", color="black", ms=5, zorder=3)
    for layer in layers:
        end = layer.layer
        for b in layer.blocks:
            if not b.kept:
                continue  # pruned: absent
            start = b.reads
            alpha = opacity(b.alpha)
            if b.kind == "universal":
                ax.add_patch(FancyBboxPatch((start + 0.2, -0.18), end - start - 0.4, 0.36,
                                            boxstyle="round,pad=0.02", color=GRAY, alpha=alpha, zorder=2))
                continue
            span = end - start
            height = 0.35 + 0.35 * span
            xs = [start + (end - start) * t / 40 for t in range(41)]
            ys = [height * 4 * (x - start) * (end - x) / span ** 2 for x in xs]
            ax.plot(xs, ys, color=BLUE, alpha=alpha, lw=2, zorder=1)
            ax.add_patch(FancyBboxPatch(((start + end) / 2 - 0.12, height - 0.09), 0.24, 0.18,
                                        boxstyle="round,pad=0.01", color=BLUE, alpha=alpha, zorder=2))
    ax.set_xlim(-0.4, n + 0.4)
    ax.set_ylim(-0.4, 0.35 + 0.35 * 3 + 0.3)
    ax.set_xticks(range(n + 1))
    ax.set_xlabel("layer output")
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title("gray: universal block (shared), blue: task block; opacity = attention weight; pruned: absent",
                 fontsize=8)
    fig.tight_layout()
    return fig



def alpha_figure(plt, labels: list[str], rows: list[list[float]]) -> Any:
    """NetTailor's alphas per epoch, one panel per layer (gray the universal block, blue the proxies)."""
    epochs = range(1, len(rows) + 1)
    layers = sorted({lab.split(" ")[1] for lab in labels}, key=int)
    cols = min(4, len(layers))
    n_rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(n_rows, cols, figsize=(3 * cols, 2.2 * n_rows), dpi=100, sharex=True, sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    for ax, layer in zip(axes.flat, layers):
        for j, lab in enumerate(labels):
            if lab.split(" ")[1] != layer:
                continue
            universal = lab.endswith("universal")
            ax.plot(epochs, [r[j] for r in rows], color=GRAY if universal else BLUE, lw=2 if universal else 1,
                    label="universal" if universal else None)
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.set_ylim(0, 1)
    axes.flat[0].set_ylabel("alpha")
    fig.suptitle("NetTailor attention weights per epoch (gray universal, blue task blocks)", fontsize=9)
    return fig


def scale_figure(plt, labels: list[str], rows: list[list[float]]) -> Any:
    """Channel attention's mean scale per unit, per epoch."""
    epochs = range(1, len(rows) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    cmap = plt.get_cmap("Blues")
    for j, lab in enumerate(labels):
        ax.plot(epochs, [r[j] for r in rows], color=cmap(0.35 + 0.65 * j / max(1, len(labels) - 1)), label=lab)
    ax.set_ylabel("mean channel scale")
    ax.legend(fontsize=6, ncol=3)
    ax.set_title("channel attention: mean scale per unit, per epoch", fontsize=9)
    return fig


def unit_scales(units: tuple[UnitScales, ...]) -> dict[int, float]:
    """Channel attention's final mean scale per unit, normalised to the largest (1 for every unit otherwise)."""
    scales = {s.unit: abs(s.mean) for s in units}
    top = max(scales.values(), default=0.0)
    return {u: v / top for u, v in scales.items()} if top > 0 else {}


def units_architecture(plt, record: TaskRecord, scales: dict[int, float] | None = None, extra: str = "") -> Any:
    """The backbone's units in a chain, blue where the task owns a copy; ``scales`` (0..1 per unit) set the
    opacity, ``extra`` is said in the title."""
    from matplotlib.patches import FancyBboxPatch

    use = UnitUse.of(record.metrics)
    n, owned, scales = use.used, set(use.owned), scales or {}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 1.5), 1.8), dpi=110)
    for u in range(n):
        color = BLUE if u in owned else GRAY
        ax.add_patch(FancyBboxPatch((u + 0.1, -0.25), 0.8, 0.5, boxstyle="round,pad=0.02", color=color,
                                    alpha=opacity(scales.get(u, 1.0))))
        ax.text(u + 0.5, 0, str(u), ha="center", va="center", fontsize=8, color="white")
    ax.set_xlim(-0.1, n + 0.1)
    ax.set_ylim(-0.5, 0.5)
    ax.axis("off")
    how = "opacity = mean attention scale" if scales else "opacity 1"
    ax.set_title(f"{record.method}: backbone units, gray shared, blue owned by the task; {how}{extra}", fontsize=8)
    fig.tight_layout()
    return fig


def attention_history(record: TaskRecord, phases: set[str] | None = None) -> tuple[list[str], list[list[float]]] | None:
    """The attention weights after every training epoch of the ``phases`` named (default: all): (series labels,
    one row of values per epoch), or None where the method records none."""
    rows: list[list[float]] = []
    labels: list[str] = []
    for phase in record.phases:
        if phases is not None and phase.name not in phases:
            continue
        for epoch in phase.history:
            if "alphas" in epoch:  # nettailor: per layer, the universal block's alpha first
                labels = [f"layer {l + 1} {'universal' if j == 0 else f'proxy {j}'}"
                          for l, alphas in enumerate(epoch["alphas"]) for j in range(len(alphas))]
                rows.append([a for alphas in epoch["alphas"] for a in alphas])
            elif "attention" in epoch:  # attention: per unit, the mean scale
                units = sorted(epoch["attention"], key=lambda s: s["unit"])
                labels = [f"unit {s['unit']}" for s in units]
                rows.append([s["mean"] for s in units])
    return (labels, rows) if rows else None


def candidates_figure(plt, search: SearchRecord) -> Any:
    """NetTailor's architecture search: each candidate's accuracy minus the teacher's on the validation images, with
    its 95% interval (image by image), against its FLOPs; the chosen one marked, the tolerance band under zero and
    the FLOPs cap (the accuracy right after pruning, before fine-tuning, is in the report's table)."""
    cands = sorted(search.candidates, key=lambda c: c.flops)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    xs = [c.flops / 1e6 for c in cands]
    diffs = [c.vs_teacher.diff for c in cands]
    errors = [[d - c.vs_teacher.interval()[0] for d, c in zip(diffs, cands)],
              [c.vs_teacher.interval()[1] - d for d, c in zip(diffs, cands)]]
    ax.errorbar(xs, diffs, yerr=errors, fmt="o-", color=BLUE, capsize=3, label="after fine-tuning (95% interval)")
    for c, x, d in zip(cands, xs, diffs):
        ax.annotate(f"k={c.k}", (x, d), textcoords="offset points", xytext=(4, 4), fontsize=7)
    i = next(i for i, c in enumerate(cands) if c.k == search.chosen)
    ax.plot(xs[i], diffs[i], "o", ms=14, mfc="none", mec="black", mew=2, label=f"chosen: k={cands[i].k}")
    ax.axhline(0, color=GRAY, ls="-", lw=1, label=f"teacher ({search.teacher_val_accuracy:.2f}%)")
    ax.axhspan(-search.tolerance, 0, color=GRAY, alpha=0.15, label=f"tolerance {search.tolerance}")
    ax.axvline(search.teacher_flops / 1e6, color=GRAY, ls="--", lw=1, label="teacher's FLOPs (cap)")
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel("points vs the teacher (val)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax.set_title("architecture search: k universal blocks dropped, each candidate fine-tuned", fontsize=9)
    fig.tight_layout()
    return fig
