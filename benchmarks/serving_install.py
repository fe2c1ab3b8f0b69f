"""The serving install against the full one, side by side in one run: size on disk, import times, cold start of
``tailor serve`` (process start to ready) and its answers on every built-in task's test split.

    python benchmarks/serving_install.py --model-dir runs/demo               # after make demo
    python benchmarks/serving_install.py --model-dir runs/demo --before fcc42ee

Three installs: ``serving`` (a fresh venv with ``pip install .``, no extra), ``full`` (the project's ``.venv``:
``.[train,test]``) and, with ``--before REV``, ``full@REV``: tailorrt as it was at REV (a wheel of that revision
beside the full venv's packages; its pyproject is given the ``tailorrt.kinds`` package it lacked). Times are medians
of rounds that take the installs in turn. The answers of the serving install's server (tritonclient, batches of
PNGs) are compared with the full install's ``Runtime``: top-1 against its torch backend, probabilities against its
onnx backend.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMPORTS = {"import tailorrt": "import tailorrt",
           "from tailorrt import Runtime": "from tailorrt import Runtime; Runtime",
           "the server (HTTP + gRPC)": "import tailorrt.serving.app, tailorrt.serving.grpc_server, tailorrt.cli.app"}


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def serving_venv(work: Path) -> Path:
    """A fresh venv with the serving install only: ``pip install .``."""
    venv = work / "serving"
    if not (venv / "bin" / "tailor").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
                       check=True)
    return venv


def before_install(work: Path, rev: str, full: Path) -> Path:
    """tailorrt at ``rev`` as a wheel in a venv of its own whose other packages are the full venv's."""
    venv = work / f"before-{rev}"
    if (venv / "ok").exists():
        return venv
    src = work / f"src-{rev}"
    shutil.rmtree(src, ignore_errors=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--force", "--detach", str(src), rev], check=True,
                   capture_output=True)
    try:
        pyproject = src / "pyproject.toml"
        text = pyproject.read_text()
        if '"tailorrt.kinds"' not in text:
            pyproject.write_text(text.replace('packages = ["tailorrt", ', 'packages = ["tailorrt", "tailorrt.kinds", '))
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        full_site = next((full / "lib").glob("python3*/site-packages"))
        subprocess.run([str(full / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--no-build-isolation", "--target", str(site), str(src)], check=True)
        (site / "zz-full-venv.pth").write_text(f"{full_site}\n")
        (venv / "ok").touch()
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(src)], capture_output=True)
    return venv


def import_seconds(python: Path, code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(python), "-c", code], check=True, capture_output=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - t0


def cold_start(venv: Path, model_dir: str, tasks: list[str], port: int) -> float:
    """Seconds from starting ``tailor serve`` (onnx backend, the tasks) to its first 200 on /v2/health/ready."""
    from tailorrt.serving.local import wait_ready

    t0 = time.perf_counter()
    proc = subprocess.Popen([str(venv / "bin" / "python"), "-m", "tailorrt.cli.app", "serve", "--model-dir",
                             model_dir, "--tasks", ",".join(tasks), "--backend", "onnx", "--port", str(port),
                             "--grpc-port", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=tempfile.gettempdir())  # not the source tree: the install's own tailorrt
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, interval=0.01)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def answers(venv: Path, model_dir: str, tasks: list[str], port: int) -> dict:
    """The serving install's server against the full install's Runtime on each task's test split and odd PNGs."""
    import numpy as np
    import tritonclient.http as httpclient

    from tailorrt import Runtime
    from tailorrt.serving.local import png_bytes, serve_process
    from tailorrt.training.world import BUILTIN_TASKS, generate
    from tests.test_serving_install import odd_pngs

    full_torch, full_onnx = Runtime(model_dir, tasks=tasks), Runtime(model_dir, tasks=tasks, backend="onnx")
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    os.chdir(tempfile.gettempdir())  # the server's working directory: not the source tree, the install's tailorrt
    out = {}
    with serve_process(model_dir, "--tasks", ",".join(tasks), "--backend", "onnx", "--grpc-port", str(port + 1),
                       env=env, python=str(venv / "bin" / "python")) as (url, _):
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        for task in tasks:
            images = generate(BUILTIN_TASKS[task], "test", full_onnx.task(task).preprocess.size)[0] \
                if task in BUILTIN_TASKS else []  # a task of another dataset: the odd images only
            pngs = [png_bytes(a) for a in images] + list(odd_pngs().values())
            got = []
            for i in range(0, len(pngs), 64):
                inp = httpclient.InferInput("image", [len(pngs[i:i + 64])], "BYTES")
                inp.set_data_from_numpy(np.array(pngs[i:i + 64], dtype=np.object_))
                got.append(client.infer(task, [inp]).as_numpy("probabilities"))
            got = np.concatenate(got)
            classes = len(full_onnx.task(task).classes)
            chunks = [pngs[i:i + 250] for i in range(0, len(pngs), 250)]  # Runtime's --max-images
            want = np.zeros_like(got)
            for row, p in zip(want, [p for c in chunks for p in full_onnx.predict(task, c, top_k=classes)]):
                row[p.indices] = p.scores
            top1 = np.array([p.indices[0] for c in chunks for p in full_torch.predict(task, c)])
            out[task] = {"images": len(pngs), "top1_equal": int((got.argmax(1) == top1).sum()),
                         "max_prob_diff_vs_onnx": float(np.abs(got - want).max()),
                         "vs_previous_preprocessing": previous_preprocessing(full_torch, task, pngs)}
        client.close()
    return out


def previous_preprocessing(runtime, task: str, pngs: list[bytes]) -> dict:
    """Logits of this version's preprocessing (PIL resize) against the one before it (torchvision's uint8 tensor
    resize, whose result depends on the CPU), through the same torch network: what a pack trained before sees."""
    import io

    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from tailorrt.rgb import to_rgb

    pre = runtime.task(task).preprocess
    old = v2.Compose([v2.Lambda(to_rgb), v2.ToImage(), v2.Resize((pre.size, pre.size), antialias=True),
                      v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))])
    x_old = np.stack([old(Image.open(io.BytesIO(b))).numpy() for b in pngs])
    x_new = np.concatenate([runtime.preprocess(task, pngs[i:i + 250]) for i in range(0, len(pngs), 250)])
    a, b = runtime.logits(task, x_new), runtime.logits(task, x_old)
    return {"max_logit_diff": float(np.abs(a - b).max()), "top1_equal": int((a.argmax(1) == b.argmax(1)).sum()),
            "inputs_differing": int((np.abs(x_new - x_old).max(axis=(1, 2, 3)) > 0).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="runs/demo")
    ap.add_argument("--tasks", default="synth-digits,synth-signs,synth-glyphs")
    ap.add_argument("--full-venv", default=str(ROOT / ".venv"))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tailorrt-serving-bench"))
    ap.add_argument("--before", help="also measure tailorrt at this git revision (full install)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    from tailorrt.cpu import cpu_model, cpu_summary
    from tailorrt.serving.local import free_port

    print(f"CPU: {cpu_model()} ({cpu_summary()}), {os.cpu_count()} cores")
    work, tasks, args.model_dir = Path(args.work), args.tasks.split(","), str(Path(args.model_dir).resolve())
    work.mkdir(parents=True, exist_ok=True)
    installs = {"serving": serving_venv(work), "full": Path(args.full_venv)}
    if args.before:
        installs[f"full@{args.before}"] = before_install(work, args.before, installs["full"])
    has_torch = {name: subprocess.run([str(v / "bin" / "python"), "-c", "import torch"], capture_output=True,
                                      cwd=tempfile.gettempdir()).returncode == 0 for name, v in installs.items()}
    sizes = {"serving": du(installs["serving"]), "full": du(installs["full"])}
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in [*IMPORTS, "cold start"]} for n in installs}
    for _ in range(args.rounds):
        for name, venv in installs.items():
            for label, code in IMPORTS.items():
                times[name][label].append(import_seconds(venv / "bin" / "python", code))
            times[name]["cold start"].append(cold_start(venv, args.model_dir, tasks, free_port()))
    medians = {n: {k: round(statistics.median(v), 3) for k, v in t.items()} for n, t in times.items()}
    served = answers(installs["serving"], args.model_dir, tasks, free_port())
    result = {"cpu": cpu_summary(), "sizes_bytes": sizes, "torch_installed": has_torch, "seconds": medians,
              "answers": served, "rounds": args.rounds}
    print(f"size on disk: serving install {sizes['serving'] / 1e6:.0f} MB, full install {sizes['full'] / 1e6:.0f} MB "
          f"({sizes['full'] / sizes['serving']:.1f}x); torch importable: {has_torch}")
    names = list(installs)
    print(f"{'median seconds':32}" + "".join(f"{n:>20}" for n in names)
          + "".join(f"{n + '/serving':>22}" for n in names[1:]))
    for label in [*IMPORTS, "cold start"]:
        row = [medians[n][label] for n in names]
        print(f"{label + (f' ({len(tasks)} tasks)' if label == 'cold start' else ''):32}"
              + "".join(f"{v:>20.3f}" for v in row) + "".join(f"{v / row[0]:>21.2f}x" for v in row[1:]))
    for task, a in served.items():
        print(f"{task}: serving install's tailor serve, top-1 equal to the full Runtime's (torch) on "
              f"{a['top1_equal']}/{a['images']} images; max |probability diff| vs its onnx backend "
              f"{a['max_prob_diff_vs_onnx']:.2g}")
        prev = a["vs_previous_preprocessing"]
        print(f"  against the previous preprocessing (torchvision uint8 resize): {prev['inputs_differing']} inputs "
              f"differ, max |logit diff| {prev['max_logit_diff']:.2g}, top-1 equal on {prev['top1_equal']}/"
              f"{a['images']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
