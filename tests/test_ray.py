"""``tailor serve --ray``: a local Ray cluster (2 CPUs) runs 2 worker replicas holding at most 2 tasks each, behind
the HTTP ingress; requests for 5 tasks (and one broken pack) are routed, answered as ``Runtime`` answers them,
evicted least recently used, and survive a replica killed mid-stream."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from tests.conftest import TAILOR, flip, one_line_error

pytest.importorskip("ray.serve", reason="the Ray tests need tailorrt[ray]")

TASKS = ["colors", "hues", "copy0", "copy1", "copy2"]
WORKER_TITLE = "ServeReplica:tailorrt:TaskWorker"  # Ray's process title of a worker replica


@pytest.fixture(scope="module")
def ray_dir(exported_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two exported tasks, three more (copies of 'colors' whose heads differ, so a misrouted request shows),
    and 'broken', whose pack file is corrupt."""
    import torch

    from tailorrt.records import TaskDraft
    from tailorrt.training.packs import TrainingDir

    root = tmp_path_factory.mktemp("ray") / "models"
    shutil.copytree(exported_dir, root)
    mdir = TrainingDir(root)
    backbone, bmeta = mdir.load_backbone()
    net, rec = mdir.load_model("colors", backbone, bmeta.sha256)
    state = net.task_state()
    (bias,) = [k for k in state if k.endswith("classifier.bias")]
    draft = TaskDraft.of(rec)
    for i, name in enumerate(["copy0", "copy1", "copy2", "broken"]):
        mdir.write_task(name, {**state, bias: state[bias] + torch.arange(len(state[bias])) * (i + 1.0)}, draft)
    flip(next((root / "tasks" / "broken").glob("*.safetensors")))
    return root


def _post(url: str, body: bytes, timeout: float = 60) -> tuple[int, Message, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _infer(url: str, task: str, pixels: np.ndarray) -> tuple[int, Message, bytes]:
    body = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape),
                        "data": pixels.reshape(-1).tolist()}], "outputs": [{"name": "logits"}]}
    return _post(f"{url}/v2/models/{task}/infer", json.dumps(body).encode())


def _logits(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["outputs"][0]["data"], dtype=np.float32)


def _workers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(WORKER_TITLE in part for part in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def ray_server(ray_dir: Path):
    """``tailor serve --ray`` on a local cluster of 2 CPUs, with the real CLI; yields its base URL."""
    from tailorrt.serving.local import free_port

    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([str(TAILOR), "serve", "--ray", "--model-dir", str(ray_dir), "--backend", "torch",
                             "--replicas", "2", "--max-tasks-per-replica", "2", "--ray-cpus", "2", "--threads", "1",
                             "--port", str(port), "--request-timeout-s", "20", "--max-delay-ms", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, f"tailor serve --ray exited: {proc.stderr.read()}"
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.time() < deadline, "the Ray deployment did not become ready"
                time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def expected(ray_dir: Path):
    """Each task's logits for a few images, as ``Runtime.predict`` computes them in this process."""
    from tailorrt.runtime import Runtime

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1, 20, 20, 3), dtype=np.uint8) for _ in range(3)]
    rt = Runtime(ray_dir, tasks=TASKS, backend="torch")
    return images, {(t, i): rt.logits(t, rt.preprocess(t, img)) for t in TASKS for i, img in enumerate(images)}


def test_tasks_are_routed_answered_as_the_runtime_does_and_evicted(ray_server, expected):
    images, want = expected
    order = [(t, i) for i in range(len(images)) for t in TASKS] * 2
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda ti: (ti, *_infer(ray_server, ti[0], images[ti[1]])), order))
    held: dict[str, list[set[str]]] = {}  # replica -> the tasks it held at each of its answers, in order
    for (task, i), status, headers, body in answers:
        assert status == 200, body
        np.testing.assert_allclose(_logits(body), want[task, i].reshape(-1), atol=1e-4)
        loaded = set(filter(None, headers["X-Tailor-Replica-Tasks"].split(",")))
        assert task in loaded and len(loaded) <= 2, loaded
        held.setdefault(headers["X-Tailor-Replica"], []).append(loaded)
    assert 1 <= len(held) <= 2
    # 5 tasks and 2 x 2 places: some replica dropped a task it held before
    assert any(before - after for seen in held.values() for before, after in itertools.pairwise(seen))
    with urllib.request.urlopen(f"{ray_server}/v2/models", timeout=30) as r:
        assert {m["name"] for m in json.load(r)["models"]} == {*TASKS, "broken"}
    with urllib.request.urlopen(f"{ray_server}/metrics", timeout=30) as r:
        text = r.read().decode()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("tailorrt_requests_total{"))
    assert counted >= len(order)


def test_a_bad_pack_fails_its_task_only(ray_server, expected):
    images, want = expected
    status, _headers, body = _infer(ray_server, "broken", images[0])
    assert status == 409 and "sha256" in json.loads(body)["error"], body
    status, _headers, body = _infer(ray_server, "nosuchtask", images[0])
    assert status == 404, body
    status, _headers, body = _infer(ray_server, "hues", images[0])
    assert status == 200
    np.testing.assert_allclose(_logits(body), want["hues", 0].reshape(-1), atol=1e-4)


def test_a_killed_replica_loses_no_request_and_is_replaced(ray_server, expected):
    images, want = expected
    before = _workers()
    assert len(before) == 2, [p.cmdline() for p in before]
    order = [(t, i % len(images)) for i in range(8) for t in TASKS]

    def send(n_ti):
        n, ti = n_ti
        if n == 10:  # mid-stream, a worker replica's process dies
            before[0].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        status, headers, body = _infer(ray_server, ti[0], images[ti[1]])
        return ti, status, headers, body, time.monotonic() - t0

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, enumerate(order)))
    for (task, i), status, headers, body, seconds in answers:
        assert seconds < 30  # none hangs: the ingress answers within --request-timeout-s (20 s)
        if status == 200:
            np.testing.assert_allclose(_logits(body), want[task, i].reshape(-1), atol=1e-4)
        else:  # a clear refusal, never a silent loss
            assert status == 503 and headers.get("Retry-After") and "retry" in json.loads(body)["error"], body
    print("killed replica:", {s: sum(a[1] == s for a in answers) for s in (200, 503)})
    assert sum(a[1] == 200 for a in answers) >= len(answers) // 2
    deadline = time.time() + 90
    while time.time() < deadline and len([p for p in _workers() if p.pid != before[0].pid]) < 2:
        time.sleep(0.5)
    assert len([p for p in _workers() if p.pid != before[0].pid]) == 2, "Ray did not replace the replica"
    for task in TASKS:  # the deployment serves every task again
        for _ in range(60):
            status, _headers, body = _infer(ray_server, task, images[0])
            if status == 200:
                break
            time.sleep(1)
        assert status == 200, body
        np.testing.assert_allclose(_logits(body), want[task, 0].reshape(-1), atol=1e-4)


def test_serve_config_builds_the_application():
    """What ``tailor serve --ray --print-config`` prints is a valid Serve config whose args build the application."""
    from ray.serve.schema import ServeDeploySchema

    from tailorrt.serving.ray import RayConfig, build, serve_config

    cfg = RayConfig(model_dir="/shared/runs", replicas=3, max_tasks_per_replica=5)
    config = ServeDeploySchema(**yaml.safe_load(yaml.safe_dump(serve_config(cfg, port=9000))))
    (application,) = config.applications
    assert application.import_path == "tailorrt.serving.ray:build" and config.http_options.port == 9000
    assert type(build(application.args)).__name__ == "Application"
    assert RayConfig.from_json(application.args) == cfg
    assert cfg.gpus_per_replica == 0 and RayConfig(model_dir="m", device="cuda").gpus_per_replica == 1
    assert RayConfig(model_dir="m", device="cuda", replica_gpus=0.5).gpus_per_replica == 0.5


def test_without_ray_serve_is_a_one_line_error(tmp_path, exported_dir):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    proc = subprocess.run([str(TAILOR), "serve", "--ray", "--model-dir", str(exported_dir)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert "pip install 'tailorrt[ray]'" in one_line_error(proc)


def test_on_demand_service_offers_every_task(ray_dir):
    """One replica's app: every task of the model dir is listed and loaded on first use; unload is refused."""
    from fastapi.testclient import TestClient

    from tailorrt.runtime import Runtime
    from tailorrt.serving.app import create_app

    rt = Runtime(ray_dir, tasks=[], backend="torch")
    with TestClient(create_app(rt, on_demand=True)) as client:
        assert client.get("/v2/health/ready").status_code == 200
        listed = {t["name"] for t in client.get("/v1/tasks").json()["tasks"] if t["name"] != "broken"}
        assert listed == set(TASKS) and rt.tasks == []
        assert client.post("/v2/repository/models/hues/load").status_code == 200 and rt.tasks == ["hues"]
        r = client.post("/v2/repository/models/hues/unload")
        assert r.status_code == 400 and "evicted" in r.json()["error"]


# a value other than the default for each option of tailor serve whose type alone does not give one
_OTHER = {"backend": "torch", "device": "cuda", "precision": "int8", "host": "0.0.0.0", "image_formats": "PNG,JPEG",
          "api_key": "k", "ray_address": "auto", "tasks": "a,b"}


def test_every_serve_option_reaches_the_ray_replicas_or_is_refused_in_one_line():
    """Each option of ``tailor serve``, given with another value than its default next to ``--ray --print-config``,
    either changes the Serve config the replicas are built from or is refused in one line naming it: none is
    silently dropped (``--fuse-weights`` and ``--body-timeout-s`` were)."""
    import click
    import typer
    from typer.testing import CliRunner

    from tailorrt.cli.app import app

    command = typer.main.get_command(app).commands["serve"]
    runner = CliRunner()
    base = ["serve", "--ray", "--print-config", "--model-dir", "m"]
    baseline = runner.invoke(app, base)
    assert baseline.exit_code == 0, baseline.output
    reached, refused = [], []
    for p in command.get_params(click.Context(command)):
        if p.param_type_name != "option" or p.name in ("ray", "print_config", "model_dir", "help"):
            continue
        if p.is_flag:
            args = [p.secondary_opts[0] if p.default else p.opts[0]] if p.secondary_opts else [p.opts[0]]
        else:
            value = _OTHER.get(p.name)
            if value is None:
                value = str(3 if p.default is None else p.default * 2 + 1)
            args = [p.opts[0], value]
        result = runner.invoke(app, [*base, *args])
        if result.exit_code == 0:
            assert result.output != baseline.output, f"{args} changed nothing the replicas receive"
            reached.append(p.name)
        else:
            lines = [l for l in result.output.strip().splitlines() if l.strip()]
            assert len(lines) == 1 and p.opts[0] in lines[0] and result.exit_code == 1, (args, result.output)
            refused.append(p.name)
    assert {"share_weights", "body_timeout_s", "max_batch", "api_key", "replicas", "port"} <= set(reached)
    assert set(refused) == {"tasks", "grpc", "grpc_port", "grpc_workers", "header_timeout_s", "workers", "ray_address",
                            "ray_cpus"}


def test_ray_only_options_without_ray_are_one_line():
    line = one_line_error(subprocess.run([str(TAILOR), "serve", "--replicas", "3"], capture_output=True, text=True))
    assert "--replicas only apply with --ray" in line
