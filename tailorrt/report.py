"""``tailor report``: a static HTML page (with matplotlib PNGs, no scripts, opens from disk) showing, per task,
what tailoring did to its network.

- The architecture picture: for a NetTailor task, one node per layer output, each layer's universal block in
  gray and its task-specific (proxy) blocks in blue, drawn as arcs from the layer output they read; the
  opacity is the block's final attention weight (alpha) and pruned blocks are absent. For the other methods,
  the chain of backbone units, gray where shared and blue where the task owns a copy; for channel attention
  the opacity is the unit's mean attention scale.
- The attention weights over training (NetTailor's alphas per layer, or attention's mean scale per unit).
- Accuracy against parameters and against FLOPs, next to the task's teacher (the whole backbone fine-tuned).
- The table of ``tailor info``, and the latest ``tailor bench`` summaries if the model dir has them.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tailorrt.backbones import BackboneSpec
from tailorrt.errors import ConfigError
from tailorrt.inventory import info_rows, size_summary
from tailorrt.io import read_json
from tailorrt.pack import ModelDir

GRAY, BLUE = "#7f7f7f", "#1f77b4"
MIN_OPACITY = 0.08  # a kept block whose weight is near 0 is still drawn faintly


@dataclass
class ReportRequest:
    model_dir: str = "runs"
    out: str | None = None  # default <model-dir>/report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _opacity(weight: float) -> float:
    return max(MIN_OPACITY, min(1.0, float(weight)))


# ------------------------------------------------------------------------------------------------ pictures

def architecture_plot(meta: dict, path: Path) -> Path:
    """The task's network as tailoring left it (see the module docstring), as a PNG."""
    plt = _pyplot()
    if meta["method"] == "nettailor":
        fig = _nettailor_architecture(plt, meta["architecture"])
    else:
        fig = _tuned_architecture(plt, meta)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _nettailor_architecture(plt, layers: list[dict]):
    from matplotlib.patches import FancyBboxPatch

    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 1.5), 3.2), dpi=110)
    for i in range(n + 1):  # layer outputs (0 is the stem's)
        ax.plot(i, 0, "o", color="black", ms=5, zorder=3)
    for layer in layers:
        end = layer["layer"]
        for b in layer["blocks"]:
            if not b["kept"]:
                continue  # pruned: absent
            start = b["reads"]
            alpha = _opacity(b["alpha"])
            if b["kind"] == "universal":
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


def _unit_scales(meta: dict) -> dict[int, float]:
    """Channel attention's final mean scale per unit, normalised to the largest (1 for every unit otherwise)."""
    record = meta.get("attention") or {}
    scales = {s["unit"]: abs(s["mean"]) for s in record.get("scales") or []}
    top = max(scales.values(), default=0.0)
    return {u: v / top for u, v in scales.items()} if top > 0 else {}


def _tuned_architecture(plt, meta: dict):
    from matplotlib.patches import FancyBboxPatch

    m = meta["metrics"]
    n, owned, scales = m["units_used"], set(m["units_owned"]), _unit_scales(meta)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 1.5), 1.8), dpi=110)
    for u in range(n):
        color = BLUE if u in owned else GRAY
        ax.add_patch(FancyBboxPatch((u + 0.1, -0.25), 0.8, 0.5, boxstyle="round,pad=0.02", color=color,
                                    alpha=_opacity(scales.get(u, 1.0))))
        ax.text(u + 0.5, 0, str(u), ha="center", va="center", fontsize=8, color="white")
    ax.set_xlim(-0.1, n + 0.1)
    ax.set_ylim(-0.5, 0.5)
    ax.axis("off")
    how = "opacity = mean attention scale" if scales else "opacity 1"
    ax.set_title(f"{meta['method']}: backbone units, gray shared, blue owned by the task; {how}", fontsize=8)
    fig.tight_layout()
    return fig


def attention_history(meta: dict) -> tuple[list[str], list[list[float]]] | None:
    """The attention weights after every training epoch: (series labels, one row of values per epoch), or
    None where the method records none."""
    rows: list[list[float]] = []
    labels: list[str] = []
    for phase in meta.get("training", {}).get("phases", []):
        for epoch in phase.get("history", []):
            if "alphas" in epoch:  # nettailor: per layer, the universal block's alpha first
                labels = [f"layer {l + 1} {'universal' if j == 0 else f'proxy {j}'}"
                          for l, alphas in enumerate(epoch["alphas"]) for j in range(len(alphas))]
                rows.append([a for alphas in epoch["alphas"] for a in alphas])
            elif "attention" in epoch:  # attention: per unit, the mean scale
                units = sorted(epoch["attention"], key=lambda s: s["unit"])
                labels = [f"unit {s['unit']}" for s in units]
                rows.append([s["mean"] for s in units])
    return (labels, rows) if rows else None


def attention_plot(meta: dict, path: Path) -> Path | None:
    """The attention weights over training as a PNG, or None where the method has none."""
    history = attention_history(meta)
    if history is None:
        return None
    labels, rows = history
    plt = _pyplot()
    epochs = range(1, len(rows) + 1)
    if meta["method"] == "nettailor":
        layers = sorted({lab.split(" ")[1] for lab in labels}, key=int)
        cols = min(4, len(layers))
        fig, axes = plt.subplots((len(layers) + cols - 1) // cols, cols, figsize=(3 * cols, 2.2 * ((len(layers) + cols - 1) // cols)),
                                 dpi=100, sharex=True, sharey=True, squeeze=False)
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
    else:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        cmap = plt.get_cmap("Blues")
        for j, lab in enumerate(labels):
            ax.plot(epochs, [r[j] for r in rows], color=cmap(0.35 + 0.65 * j / max(1, len(labels) - 1)), label=lab)
        ax.set_ylabel("mean channel scale")
        ax.legend(fontsize=6, ncol=3)
        ax.set_title("channel attention: mean scale per unit, per epoch", fontsize=9)
    for ax in fig.axes:
        ax.set_xlabel("epoch", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def tradeoff_plot(meta: dict, bmeta: dict, path: Path) -> Path:
    """Accuracy against parameters and against FLOPs: the task next to its teacher (the whole backbone)."""
    plt = _pyplot()
    m = meta["metrics"]
    spec = BackboneSpec.from_json(bmeta["spec"])
    params = m["shared_params_used"] + m["task_params"]
    teacher_params = bmeta["params"] + (spec.feature_dim + 1) * len(meta["classes"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    for ax, (x_task, x_teacher, label) in zip(axes, ((params / 1e6, teacher_params / 1e6, "parameters used (M)"),
                                                     (m["flops"] / 1e6, m["teacher_flops"] / 1e6, "MFLOPs"))):
        ax.plot(x_task, m["accuracy"], "o", color=BLUE, ms=9, label=f"{meta['method']} (task owns "
                f"{m['task_params'] / 1e3:.1f} K params)")
        if m.get("teacher_accuracy") is not None:
            ax.plot(x_teacher, m["teacher_accuracy"], "s", color=GRAY, ms=9, label="teacher (fine-tuned backbone)")
            ax.annotate("", (x_task, m["accuracy"]), (x_teacher, m["teacher_accuracy"]),
                        arrowprops={"arrowstyle": "->", "color": "black", "alpha": 0.5})
        else:
            ax.axvline(x_teacher, color=GRAY, ls="--", label="whole backbone (no teacher recorded)")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------ page

INFO_COLUMNS = (("task", "task"), ("method", "method"), ("acc %", "accuracy"), ("teacher %", "teacher_accuracy"),
                ("universal", "universal_blocks"), ("task params", "task_params"),
                ("shared params", "shared_params_used"), ("MFLOPs", "flops"), ("teacher MFLOPs", "teacher_flops"),
                ("pack KB", "pack_bytes"), ("pack/backbone", "pack_vs_backbone"))


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key in ("flops", "teacher_flops"):
        return f"{value / 1e6:.2f}"
    if key == "pack_bytes":
        return f"{value / 1e3:.1f}"
    if key == "pack_vs_backbone":
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def info_table(rows: list[dict]) -> str:
    """``tailor info``'s table as HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in INFO_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(k, r[k]))}</td>" for _, k in INFO_COLUMNS) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#eee}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;display:block;margin:.5em 0}
section{border-top:2px solid #333;margin-top:2em}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}"""


def build_report(req: ReportRequest, report: Callable[[str], None] = print) -> Path:
    """Write ``index.html`` and its PNGs into ``req.out`` (default ``<model-dir>/report``); returns the page."""
    mdir = ModelDir(req.model_dir)
    if not mdir.task_names():
        raise ConfigError(f"{mdir.root} has no tasks; train one first (tailor train --task synth-digits)")
    bmeta, rows = info_rows(mdir.root)
    sizes = size_summary(mdir.root, bmeta, rows)
    out = Path(req.out) if req.out else mdir.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tailorrt report: {esc(str(mdir.root))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>tailorrt report</h1><p>{len(rows)} tasks on backbone <b>{esc(bmeta['name'])}</b> "
             f"({bmeta['params'] / 1e6:.2f} M params, {bmeta['bytes'] / 1e6:.1f} MB) in <code>{esc(str(mdir.root))}"
             f"</code>. On disk: backbone once plus packs {sizes['tailorrt_bytes'] / 1e6:.1f} MB; one fine-tuned "
             f"model per task would be {sizes['finetuned_per_task_bytes'] / 1e6:.1f} MB.</p>",
             "<h2>Tasks (tailor info)</h2>", info_table(rows)]
    for row in rows:
        task = row["task"]
        report(f"drawing {task}")
        meta = mdir.task_meta(task)
        arch = architecture_plot(meta, out / f"{task}-architecture.png")
        att = attention_plot(meta, out / f"{task}-attention.png")
        trade = tradeoff_plot(meta, bmeta, out / f"{task}-tradeoff.png")
        teacher = "" if row["teacher_accuracy"] is None else f", teacher {row['teacher_accuracy']:.2f}%"
        parts += [f"<section id='{esc(task)}'><h2>{esc(task)}</h2><p>method <b>{esc(meta['method'])}</b>, "
                  f"test accuracy {row['accuracy']:.2f}%{teacher}; universal blocks kept {row['universal_blocks']}, "
                  f"{row['task_params']:,} task parameters, {row['flops'] / 1e6:.2f} MFLOPs "
                  f"(teacher {row['teacher_flops'] / 1e6:.2f}).</p>",
                  "<h3>Architecture</h3>", f"<img src='{esc(arch.name)}' alt='architecture of {esc(task)}'>",
                  "<h3>Attention over training</h3>",
                  f"<img src='{esc(att.name)}' alt='attention of {esc(task)}'>" if att else
                  "<p>This method learns no attention weights.</p>",
                  "<h3>Accuracy against parameters and FLOPs</h3>",
                  f"<img src='{esc(trade.name)}' alt='accuracy of {esc(task)}'>", "</section>"]
    parts += _bench_sections(mdir, out)
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _bench_sections(mdir: ModelDir, out: Path) -> list[str]:
    """The latest ``tailor bench`` summaries (and the scaling plot) of the model dir, if there are any."""
    parts = []
    for name, title in (("bench.json", "tailor bench"), ("scaling.json", "tailor bench --scaling")):
        path = mdir.root / "bench" / name
        if not path.is_file():
            continue
        parts += [f"<section><h2>{title}</h2><pre>{html.escape(read_json(path)['summary'])}</pre>"]
        png = path.with_suffix(".png")
        if png.is_file():
            shutil.copy(png, out / png.name)
            parts.append(f"<img src='{png.name}' alt='{title}'>")
        parts.append("</section>")
    return parts
