"""``tailor bench --scaling``: resident memory and load time for K tasks, tailorrt against one per-task model
each, as JSON, markdown and a PNG plot."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from tailorrt.errors import ConfigError
from tailorrt.limits import MB
from tailorrt.pack import TASK_FILE
from tailorrt.records import TaskDraft
from tailorrt.tools.bench import BenchRequest, per_task_model, probe_load, written
from tailorrt.training.io import load_tensors
from tailorrt.training.packs import TrainingDir


def scaling(req: BenchRequest, counts: tuple[int, ...], report: Callable[[str], None] = print) -> dict:
    """Resident memory and load time for K = ``counts`` tasks, tailorrt against one per-task model each; writes
    the JSON (``req.out``, default ``<model-dir>/bench/scaling.json``), its markdown and a PNG plot next to it.

    Extra tasks are copies of the model dir's packs under new names, in ``<model-dir>/bench/scaling/`` (exported
    there for the onnx backend); each copy's per-task model is a session of its own over the original's graph.
    The ideal is one backbone plus the K packs. The fixed overhead is what tailorrt holds at K=1 beyond the
    weights it loaded (on onnx, the bytes in its weight store: the universal weights the task reads and the
    task's own; elsewhere, one backbone and one pack).
    """
    from tailorrt.export.exporter import ExportRequest, export_model

    mdir = TrainingDir(req.model_dir)
    base = req.tasks or mdir.task_names()
    if not base or not counts or min(counts) < 1:
        raise ConfigError("scaling needs at least one task and task counts of 1 or more, e.g. --scaling 1,2,4,8,16")
    threads = req.threads or torch.get_num_threads()
    backbone, bmeta = mdir.load_backbone()
    size = backbone.spec.input_size
    root = mdir.root / "bench" / "scaling"
    if root.exists():
        shutil.rmtree(root)
    (root / "tasks").mkdir(parents=True)
    shutil.copytree(mdir.backbone_dir, root / "backbone")
    sub = TrainingDir(root)
    names, sources = [], {}
    for i in range(max(counts)):
        src, copy = base[i % len(base)], i // len(base)
        name = f"{src}-copy{copy}" if copy else src
        _copy_pack(mdir, src, sub, name, copy)
        names.append(name)
        sources[name] = src
    if req.backend == "onnx":
        report(f"exporting {len(names)} tasks to {root / 'onnx'}")
        export_model(ExportRequest(model_dir=str(root), parity_images=4), report=lambda _m: None)
    models = {t: per_task_model(mdir, t, backbone, mdir.root / "bench" / "per-task") for t in base}
    rows = []
    for k in counts:
        tasks = names[:k]
        report(f"loading {k} task{'s' * (k > 1)}")
        probe = {"model_dir": str(root), "tasks": tasks, "backend": req.backend, "threads": threads, "size": size}
        ours = probe_load({**probe, "kind": "tailorrt"})
        theirs = probe_load({**probe, "kind": "per-task", "graphs": [str(models[sources[t]].path) for t in tasks]})
        packs = sum(sub.task_record(t).pack.bytes for t in tasks)
        rows.append({"tasks": k, "ideal_bytes": bmeta.bytes + packs, "tailorrt_rss": ours["rss_added"],
                     "tailorrt_weights_bytes": ours["weights_bytes"],
                     "tailorrt_load_s": round(ours["load_seconds"], 3), "per_task_rss": theirs["rss_added"],
                     "per_task_load_s": round(theirs["load_seconds"], 3)})
    overhead = rows[0]["tailorrt_rss"] - (rows[0]["tailorrt_weights_bytes"] or rows[0]["ideal_bytes"])
    for r in rows:
        r["beyond_overhead_over_ideal"] = round((r["tailorrt_rss"] - overhead) / r["ideal_bytes"], 3)
        if r["tailorrt_weights_bytes"] is not None:  # what the sessions themselves hold, beyond the K=1 overhead
            r["beyond_weights_bytes"] = r["tailorrt_rss"] - overhead - r["tailorrt_weights_bytes"]
    result = {"backbone": {"name": bmeta.name, "bytes": bmeta.bytes}, "backend": req.backend,
              "fixed_overhead_bytes": overhead, "rows": rows, "threads": threads}
    result["summary"] = scaling_summary(result)
    path = Path(req.out) if req.out else mdir.root / "bench" / "scaling.json"
    written(result, path)
    scaling_plot(result, path.with_suffix(".png"))
    return result


def _copy_pack(mdir: TrainingDir, src: str, dest: TrainingDir, name: str, copy: int) -> None:
    """A pack of ``src`` named ``name`` in ``dest``. Copy ``copy`` > 0 scales every float tensor by
    ``1 + copy * 2**-20``: the task still predicts the same, but its tensors are its own bytes, so a runtime
    that keeps identical tensors once (as tailorrt's does) holds every copy's weights like a retrained task's."""
    if copy == 0:
        shutil.copytree(mdir.tasks_dir / src, dest.tasks_dir / name)
        return
    draft = TaskDraft.of(mdir.task_record(src))
    tensors = {k: v * (1 + copy * 2.0 ** -20) if v.is_floating_point() else v
               for k, v in load_tensors(mdir.tasks_dir / src / TASK_FILE).items()}
    dest.write_task(name, tensors, draft)


def scaling_summary(r: dict) -> str:
    lines = [f"Scaling on {r['backbone']['name']} ({r['backbone']['bytes'] / MB:.1f} MB), {r['backend']}: fixed "
             f"overhead {r['fixed_overhead_bytes'] / MB:.1f} MB (tailorrt at K=1 minus the weights it loaded)", "",
             "| tasks | ideal (backbone + packs) | tailorrt | (tailorrt - overhead) / ideal | tailorrt weights | "
             "beyond weights and overhead | per-task models | tailorrt load s | per-task load s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        weights, beyond = row["tailorrt_weights_bytes"], row.get("beyond_weights_bytes")
        lines.append(f"| {row['tasks']} | {row['ideal_bytes'] / MB:.1f} MB | {row['tailorrt_rss'] / MB:.1f} MB | "
                     f"{row['beyond_overhead_over_ideal']:.3f} | "
                     f"{'-' if weights is None else f'{weights / MB:.1f} MB'} | "
                     f"{'-' if beyond is None else f'{beyond / MB:.1f} MB'} | {row['per_task_rss'] / MB:.1f} MB | "
                     f"{row['tailorrt_load_s']:.2f} | {row['per_task_load_s']:.2f} |")
    return "\n".join(lines) + "\n"


def scaling_plot(r: dict, path: Path) -> Path:
    """Resident memory against the number of tasks, tailorrt, per-task models and the ideal, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = [row["tasks"] for row in r["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(k, [row["per_task_rss"] / MB for row in r["rows"]], "o-", color="tab:gray", label="one model per task")
    ax.plot(k, [row["tailorrt_rss"] / MB for row in r["rows"]], "o-", color="tab:blue", label="tailorrt")
    ax.plot(k, [(row["ideal_bytes"] + r["fixed_overhead_bytes"]) / MB for row in r["rows"]], "--", color="tab:green",
            label="ideal + fixed overhead")
    ax.set_xlabel("tasks loaded")
    ax.set_ylabel("resident memory added (MB)")
    ax.set_title(f"{r['backbone']['name']} backbone, {r['backend']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
