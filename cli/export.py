"""``tailor export``: ONNX, int8, bf16 and TensorRT from the task packs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tailorrt.cli.common import ModelDirOpt, app, err, mb, names, out, training_side
from tailorrt.kinds import DEFAULT_PRECISION
from tailorrt.kinds.onnx import FUSE_BUDGET
from tailorrt.records import ExportRecord


@app.command("export", epilog="Examples:\n\n  tailor export   # ONNX for every task in runs/\n\n"
             "  tailor export --model-dir runs/demo --tasks synth-digits,synth-signs --bench\n\n"
             "  tailor export --precision int8 --max-precision-drop 0.5   # also int8 graphs, calibrated on "
             "training images\n\n"
             "  tailor export --fuse-budget 0   # every universal convolution shared, none copied\n\n"
             "  tailor export --trt --fp16 --max-batch 64   # needs an NVIDIA GPU: pip install 'tailorrt\\[gpu]'")
@training_side
def export_(
    model_dir: str = ModelDirOpt,
    tasks: str | None = typer.Option(None, help="Comma-separated task names (default: every task)."),
    onnx: bool = typer.Option(False, "--onnx", help="Write ONNX graphs (the default when no format is named)."),
    trt: bool = typer.Option(False, "--trt", help="Also build TensorRT engines (from the ONNX graphs)."),
    fp16: bool = typer.Option(False, "--fp16", help="Build fp16 TensorRT engines (with --trt)."),
    max_batch: int = typer.Option(32, help="Largest batch of the TensorRT optimisation profile."),
    data_dir: Path = typer.Option(Path("data"), help="Where the tasks' datasets live (validation images for "
                                  "the parity check)."),
    download: bool = typer.Option(True, help="Try to download a missing dataset."),
    parity_images: int = typer.Option(256, help="Validation images used for the parity check."),
    bench: bool = typer.Option(False, "--bench", help="Also time PyTorch eager vs ONNX Runtime (vs TensorRT) "
                               "at batch 1 and 32, side by side, into export.json."),
    precision: str = typer.Option(DEFAULT_PRECISION, help="fp32, or also int8 (ONNX graphs in <model-dir>/onnx-int8, "
                                  "calibrated on training images) or bf16 (a check for the torch backend; needs a "
                                  "CPU with AVX512-BF16 or AMX)."),
    max_precision_drop: float = typer.Option(0.5, help="Refuse an int8 or bf16 export that loses more test "
                                             "accuracy than this, in points, against fp32."),
    calibration_images: int = typer.Option(512, help="Training images that set the int8 activation ranges."),
    check_images: int = typer.Option(2000, help="Test images of the int8 / bf16 accuracy check (all if fewer)."),
    fuse_budget: float = typer.Option(FUSE_BUDGET, help="The fraction of the shared weights' bytes "
                                      "each task graph may copy to fold its batch norms in (the stem and first "
                                      "blocks first, where a separate batch norm costs the most); 0 shares every "
                                      "convolution."),
) -> None:
    """Export task packs: ONNX graphs that share one universal weight file (<model-dir>/onnx/) and optionally
    TensorRT engines (<model-dir>/trt/). Every graph is checked against PyTorch on validation images; the
    export fails, keeping the previous one, when the logits differ by more than 1e-4. With --precision int8 or
    bf16, a task that loses more than --max-precision-drop points of test accuracy against fp32 fails the same way."""
    from tailorrt.export.exporter import ExportRequest, export_model

    del onnx  # ONNX is always written: engines are built from it
    req = ExportRequest(model_dir=model_dir, tasks=names(tasks),
                        trt=trt, fp16=fp16, max_batch=max_batch, data_dir=str(data_dir), download=download,
                        parity_images=parity_images, bench=bench, precision=precision,
                        max_precision_drop=max_precision_drop,
                        calibration_images=calibration_images, check_images=check_images,
                        fuse_budget=fuse_budget)
    result = export_model(req, report=lambda line: err.print(line, highlight=False, markup=False,
                                                                         soft_wrap=True))
    for kind, record in result.items():
        if record is None:
            continue
        folder = Path(model_dir) / kind
        out.print(f"[green]wrote[/green] {folder}: {len(record.tasks)} tasks, {mb(record.bytes)} "
                  f"(manifest {folder / 'export.json'})", highlight=False)
        if bench and any(t.speed for t in record.tasks.values()):
            _print_speed(kind, record)


def _print_speed(kind: str, record: ExportRecord) -> None:
    """The side-by-side timings an export recorded (``--bench``): PyTorch, ONNX Runtime and, for engines, TensorRT."""
    timed = [(name, b) for name, entry in record.tasks.items() for b in entry.speed]
    engines = any("tensorrt" in b.images_per_s for _, b in timed)
    table = Table("task", "batch", *(["pytorch img/s", "onnxruntime img/s", "ort/pytorch"]
                                     + (["tensorrt img/s"] if engines else [])), title=f"{kind} speed")
    for name, b in timed:
        row = [name, str(b.batch), f"{b.images_per_s['pytorch']:.0f}", f"{b.images_per_s['onnxruntime']:.0f}",
               f"{b.onnxruntime_vs_pytorch:.2f}x"]
        if engines:
            row.append(f"{b.images_per_s['tensorrt']:.0f}")
        table.add_row(*row)
    out.print(table)
