"""``tailor report``: a static HTML page (with matplotlib PNGs, no scripts, opens from disk) showing, per task,
what tailoring did to its network.

- The architecture picture and the attention weights over training, as each method draws them
  (:mod:`tailorrt.training.methods.parts.pictures`).
- Accuracy against parameters and against FLOPs, next to the task's teacher (the whole backbone fine-tuned).
- The table of ``tailor info``, and the latest ``tailor bench`` summaries if the model dir has them.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tailorrt.errors import ConfigError
from tailorrt.files import read_json
from tailorrt.inventory import info_rows, method_label, size_summary
from tailorrt.pack import ModelDir
from tailorrt.records import BackboneRecord, TaskRecord
from tailorrt.training import methods
from tailorrt.training.methods.parts.pictures import BLUE, GRAY


@dataclass
class ReportRequest:
    model_dir: str = "runs"
    out: str | None = None  # default <model-dir>/report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------------------ pictures

def _save(plt, fig, path: Path, **kwargs) -> Path:
    fig.savefig(path, **kwargs)
    plt.close(fig)
    return path


def architecture_plot(rec: TaskRecord, path: Path) -> Path:
    """The task's network as tailoring left it (drawn by its method), as a PNG."""
    plt = _pyplot()
    return _save(plt, methods.for_record(rec).architecture_figure(plt, rec), path, bbox_inches="tight")


def attention_plot(rec: TaskRecord, path: Path) -> Path | None:
    """The attention weights over training as a PNG, or None where the method learns none."""
    plt = _pyplot()
    fig = methods.for_record(rec).attention_figure(plt, rec)
    if fig is None:
        return None
    for ax in fig.axes:
        ax.set_xlabel("epoch", fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)


def selection_plot(rec: TaskRecord, path: Path) -> Path | None:
    """The candidates training chose among, as a PNG, or None where the method searched none."""
    plt = _pyplot()
    fig = methods.for_record(rec).selection_figure(plt, rec)
    return None if fig is None else _save(plt, fig, path)


def tradeoff_plot(rec: TaskRecord, backbone: BackboneRecord, path: Path) -> Path | None:
    """Accuracy against parameters and against FLOPs: the task next to its teacher (the whole backbone); None for a
    pack recorded without training figures."""
    plt = _pyplot()
    m = rec.metrics
    if m is None:
        return None
    spec = backbone.spec
    params = m.shared_params_used + m.task_params
    teacher_params = backbone.params + (spec.feature_dim + 1) * len(rec.classes)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    for ax, (x_task, x_teacher, label) in zip(axes, ((params / 1e6, teacher_params / 1e6, "parameters used (M)"),
                                                     (m.flops / 1e6, m.teacher_flops / 1e6, "MFLOPs"))):
        ax.plot(x_task, m.accuracy, "o", color=BLUE, ms=9, label=f"{rec.method} (task owns "
                f"{m.task_params / 1e3:.1f} K params)")
        if m.teacher_accuracy is not None:
            ax.plot(x_teacher, m.teacher_accuracy, "s", color=GRAY, ms=9, label="teacher (fine-tuned backbone)")
            ax.annotate("", (x_task, m.accuracy), (x_teacher, m.teacher_accuracy),
                        arrowprops={"arrowstyle": "->", "color": "black", "alpha": 0.5})
        else:
            ax.axvline(x_teacher, color=GRAY, ls="--", label="whole backbone (no teacher recorded)")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(plt, fig, path)


# ------------------------------------------------------------------------------------------------------ page

INFO_COLUMNS = (("task", "task"), ("method", "method"), ("acc %", "accuracy"), ("teacher %", "teacher_accuracy"),
                ("universal", "universal_blocks"), ("chosen", "chosen"), ("task params", "task_params"),
                ("shared params", "shared_params_used"), ("MFLOPs", "flops"), ("teacher MFLOPs", "teacher_flops"),
                ("pack KB", "pack_bytes"), ("pack/backbone", "pack_vs_backbone"))


def _cell(key: str, value) -> str:
    if value is None or value == "":
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
    shown = [{**r, "method": method_label(r)} for r in rows]
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(k, r[k]))}</td>" for _, k in INFO_COLUMNS) + "</tr>"
                   for r in shown)
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
    backbone, rows = info_rows(mdir.root, methods.describe)
    sizes = size_summary(mdir.root, backbone, rows)
    out = Path(req.out) if req.out else mdir.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tailorrt report: {esc(str(mdir.root))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>tailorrt report</h1><p>{len(rows)} tasks on backbone <b>{esc(backbone.name)}</b> "
             f"({backbone.params / 1e6:.2f} M params, {backbone.bytes / 1e6:.1f} MB) in <code>{esc(str(mdir.root))}"
             f"</code>. On disk: backbone once plus packs {sizes['tailorrt_bytes'] / 1e6:.1f} MB; one fine-tuned "
             f"model per task would be {sizes['finetuned_per_task_bytes'] / 1e6:.1f} MB.</p>",
             "<h2>Tasks (tailor info)</h2>", info_table(rows)]
    for row in rows:
        task = row["task"]
        report(f"drawing {task}")
        rec = mdir.task_record(task)
        arch = architecture_plot(rec, out / f"{task}-architecture.png")
        att = attention_plot(rec, out / f"{task}-attention.png")
        trade = tradeoff_plot(rec, backbone, out / f"{task}-tradeoff.png")
        chosen = selection_plot(rec, out / f"{task}-selection.png")
        teacher = "" if row["teacher_accuracy"] is None else f", teacher {row['teacher_accuracy']:.2f}%"
        parts += [f"<section id='{esc(task)}'><h2>{esc(task)}</h2><p>method <b>{esc(rec.method)}</b>, "
                  f"test accuracy {row['accuracy']:.2f}%{teacher}; universal blocks kept {row['universal_blocks']}, "
                  f"{row['task_params']:,} task parameters, {row['flops'] / 1e6:.2f} MFLOPs "
                  f"(teacher {row['teacher_flops'] / 1e6:.2f}).</p>",
                  "<h3>Architecture</h3>", f"<img src='{esc(arch.name)}' alt='architecture of {esc(task)}'>",
                  "<h3>Attention over training</h3>",
                  f"<img src='{esc(att.name)}' alt='attention of {esc(task)}'>" if att else
                  "<p>This method learns no attention weights.</p>",
                  *_selection_section(rec, chosen),
                  *_auto_section(rec),
                  *(["<h3>Accuracy against parameters and FLOPs</h3>",
                     f"<img src='{esc(trade.name)}' alt='accuracy of {esc(task)}'>"] if trade else []), "</section>"]
    parts += _bench_sections(mdir, out)
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _selection_section(rec: TaskRecord, picture: Path | None) -> list[str]:
    """The candidates the method's training chose among, where it searched any."""
    if picture is None:
        return []
    esc = html.escape
    method = methods.for_record(rec)
    table = method.selection_table(rec)
    rows = "" if table is None else (
        "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table[0]) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table[1]) + "</table>")
    said = ". ".join(x for x in (method.describe(rec), method.verdict(rec)) if x)
    return ["<h3>Architecture search</h3>", f"<p>{esc(said)}.</p>",
            f"<img src='{esc(picture.name)}' alt='candidates of {esc(rec.task)}'>", rows]


def _auto_section(rec: TaskRecord) -> list[str]:
    """How ``--method auto`` chose the task's method: every candidate's figures and the reason, if it did."""
    auto = rec.auto  # tailorrt.training.auto's record of its choice
    if auto is None:
        return []
    esc = html.escape
    head = "".join(f"<th>{h}</th>" for h in ("candidate", "val acc %", "test acc %", "pack KB", "MFLOPs",
                                             "short training s", "outside the budget"))
    body = "".join(f"<tr><td>{esc(r.method)}{' (chosen)' * (r.method == auto.winner)}</td>"
                   f"<td>{r.val_accuracy:.2f}</td><td>{r.test_accuracy:.2f}</td>"
                   f"<td>{r.pack_bytes / 1e3:.1f}</td><td>{r.flops / 1e6:.2f}</td><td>{r.seconds:.0f}</td>"
                   f"<td>{esc('; '.join(r.misses) or '-')}</td>"
                   "</tr>" for r in auto.candidates)
    return ["<h3>Chosen by --method auto</h3>", f"<p>{esc(auto.reason)}. Choosing took "
            f"{auto.search_seconds:.0f} s on a schedule of {auto.schedule_fraction:.2f} of the full one; "
            f"training the winner took {auto.final_seconds:.0f} s.</p>", f"<table><tr>{head}</tr>{body}</table>"]


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
