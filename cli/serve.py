"""``tailor serve`` and ``tailor predict``: the runtime over HTTP and gRPC (or Ray Serve), and on files."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click
import typer
from typer.core import TyperCommand

from tailorrt.cli.common import ModelDirOpt, app, err, fail, names, out
from tailorrt.kinds import DEFAULT_PRECISION
from tailorrt.limits import MIB, Limits
from tailorrt.serving.config import BatchConfig, RayConfig, ServerConfig


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


@app.command(epilog="Examples:\n\n  tailor serve --tasks synth-digits,synth-signs --model-dir runs/demo\n\n"
             "  tailor serve --backend onnx --port 8080 --grpc-port 8081 --max-batch 64 --api-key $KEY\n\n"
             "  tailor serve --precision int8   # after tailor export --precision int8\n\n"
             "  tailor serve --backend onnx --workers 2   # two processes, one copy of the weights\n\n"
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
    workers: int = typer.Option(ServerConfig.workers, help="Server processes on the same ports (onnx backend on "
                                "the CPU): they map one copy of the weights, sum their metrics and statistics, and "
                                "apply every repository load or unload; each batches on its own."),
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
            fail(f"--ray needs Ray Serve, which is not installed ({e}); pip install 'tailorrt[ray]'")
    limits = Limits(max_pixels=int(max_image_mpx * 1e6), max_images=max_images,
                    max_decode_bytes=int(max_decode_mb * MIB),
                    formats=tuple(f.upper() for f in names(image_formats) or []))
    batch = BatchConfig(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue, workers=batch_workers)
    if ray:
        _serve_ray(RayConfig(model_dir=model_dir, backend=backend, device=device, precision=precision,
                             share_weights=share_weights, threads=threads, replicas=replicas,
                             max_tasks_per_replica=max_tasks_per_replica, replica_cpus=replica_cpus,
                             replica_gpus=replica_gpus, request_timeout_s=request_timeout_s, max_body_mb=max_body_mb,
                             body_timeout_s=body_timeout_s, api_key=api_key, batch=batch, limits=limits),
                   host=host, port=port, address=ray_address, num_cpus=ray_cpus, print_config=print_config)
        return
    from tailorrt.serving.connections import HeaderTimeoutConfig, address, check_free
    from tailorrt.serving.workers import ServeSpec, check_workers, serve_workers

    cfg = ServerConfig(max_body_bytes=int(max_body_mb * MIB), body_timeout_s=body_timeout_s,
                       header_timeout_s=header_timeout_s, api_key=api_key, grpc_port=grpc_port if grpc else None,
                       grpc_host=host, grpc_workers=grpc_workers, batch=batch, workers=workers)
    spec = ServeSpec(model_dir, names(tasks), backend=backend, device=device, share_weights=share_weights,
                     precision=precision, limits=limits, server=cfg)
    check_workers(spec, workers)
    if grpc:
        check_free(host, grpc_port)  # before anything is loaded
    where = f"http://{address(host, port)}" + (f" and grpc://{address(host, grpc_port)}" if grpc else "")

    def uvicorn_config(app, **kwargs) -> HeaderTimeoutConfig:
        return HeaderTimeoutConfig(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30,
                                   header_timeout_s=cfg.header_timeout_s, **kwargs)

    def announce(loaded: list[str]) -> None:
        processes = f", {workers} worker processes" if workers > 1 else ""
        err.print(f"serving {', '.join(loaded)} ({backend} backend, {precision}{processes}) on {where}",
                  highlight=False, markup=False, soft_wrap=True)

    if workers > 1:
        serve_workers(spec, workers, uvicorn_config, announce)
        return
    import uvicorn

    from tailorrt.serving.app import create_app

    runtime = spec.runtime()
    announce(runtime.tasks)
    server = uvicorn.Server(uvicorn_config(create_app(runtime, cfg)))
    server.run()
    if not server.started:
        raise typer.Exit(3)


# tailor serve's options that a Ray Serve deployment cannot honour (its HTTP proxy is Ray's: no gRPC endpoint, no
# header timeout of ours; replicas load tasks on demand), and the Ray-only ones plain tailor serve has no use for


NOT_WITH_RAY = {"tasks": "--ray serves every task of the model dir, loaded on demand",
                "grpc": "--ray serves HTTP only", "grpc_port": "--ray serves HTTP only",
                "grpc_workers": "--ray serves HTTP only", "header_timeout_s": "Ray's HTTP proxy reads the headers",
                "workers": "--ray scales with --replicas"}
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
            fail("; ".join(f"{_flag(n)} does not apply with --ray{' --print-config' if n in LOCAL_RAY_ONLY else ''}"
                            f" ({why})" for n, why in refused.items()))
    else:
        stray = [n for n in RAY_ONLY if n in given]
        if stray:
            fail(f"{', '.join(_flag(n) for n in stray)} only apply with --ray")


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
        fail(f"no tasks in {cfg.model_dir}; train one first (tailor train --task ...)")
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
