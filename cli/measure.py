"""``tailor info``, ``bench`` and ``report``: what a model dir holds, how fast it runs, and its report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tailorrt.cli.common import ModelDirOpt, app, err, fail, mb, names, out, training_side
from tailorrt.kinds import DEFAULT_PRECISION


@app.command(epilog="Examples:\n\n  tailor info\n\n  tailor info --model-dir runs --json")
def info(model_dir: str = ModelDirOpt, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """One row per task (accuracy, blocks kept, parameters, FLOPs, bytes of pack, ONNX graph and engine) and
    the bytes on disk against one fine-tuned model per task."""
    from tailorrt.extras import missing_training
    from tailorrt.inventory import info_rows, method_label, size_summary

    describe = None  # what training chose, as its method words it: the training side's (none in a serving install)
    if not missing_training():
        from tailorrt.training.methods import describe
    backbone, rows = info_rows(model_dir, describe)
    sizes = size_summary(model_dir, backbone, rows)
    if as_json:
        out.print_json(data={"backbone": {"name": backbone.name, "sha256": backbone.sha256, "params": backbone.params,
                                          "bytes": backbone.bytes}, "tasks": rows, "sizes": sizes})
        return
    out.print(f"backbone {backbone.name} ({backbone.params / 1e6:.2f} M params, {mb(backbone.bytes)}, "
              f"sha256 {backbone.sha256[:12]}) in {model_dir}", highlight=False)
    table = Table("task", "method", "acc %", "teacher %", "universal", "chosen", "task params", "shared params",
                  "MFLOPs", "teacher MFLOPs", "pack KB", "pack/backbone", "onnx KB", "engine KB")
    for r in rows:
        onnx_kb = "-" if r["onnx_bytes"] is None else f"{r['onnx_bytes'] / 1e3:.1f}" + (" (stale)" * r["onnx_stale"])
        teacher = "-" if r["teacher_accuracy"] is None else f"{r['teacher_accuracy']:.2f}"
        table.add_row(r["task"], method_label(r), f"{r['accuracy']:.2f}", teacher,
                      r["universal_blocks"], r["chosen"] or "-", f"{r['task_params']:,}",
                      f"{r['shared_params_used']:,}",
                      f"{r['flops'] / 1e6:.2f}", f"{r['teacher_flops'] / 1e6:.2f}", f"{r['pack_bytes'] / 1e3:.1f}",
                      f"{100 * r['pack_vs_backbone']:.1f}%", onnx_kb,
                      "-" if r["engine_bytes"] is None else f"{r['engine_bytes'] / 1e3:.1f}")
    out.print(table)
    n = sizes["tasks"]
    out.print(f"on disk: backbone {mb(sizes['backbone_bytes'])} once + {n} task packs {mb(sizes['packs_bytes'])} = "
              f"{mb(sizes['tailorrt_bytes'])}; one fine-tuned model per task would be "
              f"{mb(sizes['finetuned_per_task_bytes'])} "
              f"({sizes['finetuned_per_task_bytes'] / sizes['tailorrt_bytes']:.2f}x)", highlight=False)
    for export in sizes["exports"].values():
        out.print(export["summary"], highlight=False)


@app.command(epilog="Examples:\n\n  tailor bench --model-dir runs/demo\n\n"
             "  tailor bench --model-dir runs --tasks svhn,omniglot --batches 1,8,32 --out bench.json\n\n"
             "  tailor bench --model-dir runs/demo --scaling 1,2,4,8,16\n\n"
             "  tailor bench --model-dir runs/demo --precision int8   # int8 next to fp32, after export "
             "--precision int8")
@training_side
def bench(
    model_dir: str = ModelDirOpt,
    tasks: str | None = typer.Option(None, help="Comma-separated tasks (default: every task)."),
    backend: str = typer.Option("onnx", help="tailorrt's backend: onnx, torch or tensorrt."),
    batches: str = typer.Option("1,32", help="Batch sizes of the per-task timing."),
    rounds: int = typer.Option(7, help="Interleaved timing rounds (median, min and max are reported; a speedup "
                               "is the median of the rounds' ratios, with its quartiles)."),
    requests: int = typer.Option(3000, help="Requests per stream through the dynamic batcher."),
    clients: int = typer.Option(16, help="Concurrent clients of each stream."),
    max_batch: int = typer.Option(32, help="The batcher's batch limit."),
    threads: int | None = typer.Option(None, help="Threads of every session (default: torch's)."),
    precision: str = typer.Option(DEFAULT_PRECISION, help="Also time the Runtime at int8 or bf16 next to fp32 (after "
                                  "tailor export --precision ...), with the export's accuracy check."),
    scaling: str | None = typer.Option(None, help="Instead: memory and load time for these task counts "
                                          "(copies of the packs under new names), with a PNG plot."),
    out_path: Path | None = typer.Option(None, "--out", help="The JSON to write (default "
                                            "<model-dir>/bench/bench.json or scaling.json); markdown goes next to it."),
) -> None:
    """Measure tailorrt against one fine-tuned model per task in its own ONNX Runtime session and against the
    machine's dense limit: memory, disk, load time, images/s per task, speedup next to the FLOP ratio, and a
    mixed-task request stream through the batcher."""
    from tailorrt.tools import bench as b
    from tailorrt.tools.scaling import scaling as scale

    req = b.BenchRequest(model_dir=model_dir, tasks=names(tasks), backend=backend,
                         batches=tuple(int(x) for x in batches.split(",")), rounds=rounds, requests=requests,
                         clients=clients, max_batch=max_batch, threads=threads, precision=precision,
                         out=str(out_path) if out_path else None)
    def report(m: str) -> None:
        err.print(m, highlight=False)

    if scaling and precision != DEFAULT_PRECISION:
        fail("--precision applies to the timing bench, not to --scaling")
    if scaling:
        result = scale(req, tuple(int(x) for x in scaling.split(",")), report=report)
    else:
        result = b.bench(req, report=report)
    out.print(result["summary"], highlight=False, markup=False)
    err.print(f"wrote {result['path']} (and .md{', .png' if scaling else ''} next to it)", highlight=False)


@app.command(epilog="Examples:\n\n  tailor report --model-dir runs/demo   # writes runs/demo/report/index.html\n\n"
             "  tailor report --model-dir runs --out /tmp/report")
@training_side
def report(
    model_dir: str = ModelDirOpt,
    out_dir: Path | None = typer.Option(None, "--out", help="Folder of the page and its PNGs "
                                           "(default <model-dir>/report)."),
) -> None:
    """A static HTML page (open it from disk) showing per task its architecture (universal blocks gray, task
    blocks blue, opacity = attention weight, pruned blocks absent), the attention weights over training,
    accuracy against parameters and FLOPs next to its teacher, the table of tailor info, and the latest
    tailor bench figures."""
    from tailorrt.tools.report import ReportRequest, build_report

    page = build_report(ReportRequest(model_dir, str(out_dir) if out_dir else None),
                        report=lambda m: err.print(m, highlight=False))
    out.print(f"wrote {page}", highlight=False, markup=False, soft_wrap=True)
