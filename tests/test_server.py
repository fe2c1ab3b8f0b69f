"""The HTTP server in-process (KServe v2, v1 upload, metrics, API key, a catalogue of bad requests) and the
real ``tailor serve`` / ``tailor predict`` commands."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tailorrt import Runtime
from tailorrt.errors import OverloadedError
from tailorrt.limits import Limits
from tailorrt.serving.app import ServerConfig, create_app
from tailorrt.serving.local import free_port, png_bytes, wait_ready
from tailorrt.training.packs import TrainingDir
from tests.conftest import TAILOR, class_image, run_cli

KEY = "s3cret"


@pytest.fixture(scope="module")
def runtime(exported_dir):
    return Runtime(exported_dir, backend="onnx", limits=Limits(max_pixels=250_000, max_images=8))


@pytest.fixture(scope="module")
def client(runtime):
    with TestClient(create_app(runtime, ServerConfig(max_body_bytes=200_000))) as c:
        yield c


def _bytes_request(*images: bytes, outputs=None) -> dict:
    body = {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                    "data": [base64.b64encode(i).decode() for i in images]}]}
    if outputs is not None:
        body["outputs"] = outputs
    return body


def test_health_metadata_and_task_list(client, runtime):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert set(client.get("/v2").json()["extensions"]) == {"classification", "model_repository", "model_configuration",
                                                           "statistics", "binary_tensor_data"}
    assert {m["name"] for m in client.get("/v2/models").json()["models"]} == {"colors", "hues"}
    meta = client.get("/v2/models/hues").json()
    assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 4]}
    assert client.get("/v2/models/hues/ready").json()["ready"]
    assert client.get("/v2/models/hues/versions/1/config").json()["max_batch_size"] == 32
    r = client.get("/v2/models/hues/versions/2/stats")
    assert r.status_code == 404 and "only version 1" in r.json()["error"]
    assert [m["name"] for m in client.get("/v2/models/stats").json()["model_stats"]] == ["colors", "hues"]
    tasks = client.get("/v1/tasks").json()["tasks"]
    assert [t["name"] for t in tasks] == ["colors", "hues"] and tasks[1]["classes"] == runtime.task("hues").classes


def test_v2_infer_bytes_uint8_and_fp32_agree_with_runtime(client, runtime):
    img = class_image(2, np.random.default_rng(5), size=20)
    want = runtime.predict("hues", img, top_k=2)
    r = client.post("/v2/models/hues/infer", json=_bytes_request(png_bytes(img), png_bytes(img)))
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "r1" and out["logits"]["shape"] == [2, 4]
    probs = np.array(out["probabilities"]["data"]).reshape(2, 4)
    assert probs[0].argmax() == want.indices[0] and probs[0][want.indices[0]] == pytest.approx(want.scores[0], abs=1e-5)
    r = client.post("/v2/models/hues/infer", json=_bytes_request(
        png_bytes(img), outputs=[{"name": "probabilities", "parameters": {"classification": 2}}]))
    (cls,) = r.json()["outputs"]
    assert cls["datatype"] == "BYTES" and cls["shape"] == [1, 2]
    score, index, label = cls["data"][0].split(":", 2)
    assert int(index) == want.indices[0] and label == want.labels[0] and float(score) == pytest.approx(want.scores[0],
                                                                                                         abs=1e-5)
    arr = np.array(img)
    pixels = {"name": "pixels", "datatype": "UINT8", "shape": list(arr.shape), "data": arr.ravel().tolist()}
    r = client.post("/v2/models/hues/infer", json={"inputs": [pixels]})
    assert r.status_code == 200 and np.argmax(r.json()["outputs"][0]["data"]) == want.indices[0]
    x = runtime.preprocess("hues", img)
    r = client.post("/v2/models/hues/infer", json={"inputs": [{"name": "input", "datatype": "FP32",
                                                                "shape": list(x.shape), "data": x.ravel().tolist()}]})
    assert r.status_code == 200 and np.argmax(r.json()["outputs"][0]["data"]) == want.indices[0]


def test_v1_predict_upload_and_raw_body(client, runtime):
    img = class_image(0, np.random.default_rng(6), size=20)
    want = runtime.predict("colors", img, top_k=3)
    r = client.post("/v1/tasks/colors:predict?top_k=3", files={"file": ("a.png", png_bytes(img), "image/png")})
    assert r.status_code == 200, r.text
    assert [t["label"] for t in r.json()["top_k"]] == want.labels
    r = client.post("/v1/tasks/colors:predict", content=png_bytes(img), headers={"content-type": "image/png"})
    assert r.json()["label"] == want.label


def _bomb() -> bytes:
    """A PNG that is tiny on the wire but claims 4000x4000 pixels."""
    return png_bytes(Image.new("L", (4000, 4000)))


MALFORMED = [
    ("unknown task", "post", "/v2/models/nope/infer", {"json": _bytes_request(b"x")}, 404),
    ("unknown task v1", "post", "/v1/tasks/nope:predict", {"content": b"x"}, 404),
    ("unknown model metadata", "get", "/v2/models/nope", {}, 404),
    ("empty body", "post", "/v2/models/colors/infer", {"content": b""}, 400),
    ("empty upload", "post", "/v1/tasks/colors:predict", {"content": b""}, 400),
    ("not json", "post", "/v2/models/colors/infer", {"content": b"{nope"}, 400),
    ("json not an object", "post", "/v2/models/colors/infer", {"json": [1, 2]}, 400),
    ("no inputs", "post", "/v2/models/colors/infer", {"json": {"inputs": []}}, 400),
    ("two inputs", "post", "/v2/models/colors/infer", {"json": {"inputs": [{}, {}]}}, 400),
    ("bad datatype", "post", "/v2/models/colors/infer",
     {"json": {"inputs": [{"name": "image", "datatype": "INT64", "shape": [1], "data": [1]}]}}, 400),
    ("bad shape", "post", "/v2/models/colors/infer",
     {"json": {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [2, 2, 3], "data": [1, 2]}]}}, 400),
    ("negative shape", "post", "/v2/models/colors/infer",
     {"json": {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [-1], "data": [1]}]}}, 400),
    ("uint8 out of range", "post", "/v2/models/colors/infer",
     {"json": {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 1, 3], "data": [1, 2, 300]}]}}, 400),
    ("fp32 wrong size", "post", "/v2/models/colors/infer",
     {"json": {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 4, 4], "data": [0.0] * 48}]}}, 400),
    ("ragged data", "post", "/v2/models/colors/infer",
     {"json": {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2], "data": [[1.0], [1.0, 2.0]]}]}}, 400),
    ("bad base64", "post", "/v2/models/colors/infer",
     {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}}, 400),
    ("bytes not an image", "post", "/v2/models/colors/infer", {"json": _bytes_request(b"hello")}, 400),
    ("truncated image", "post", "/v1/tasks/colors:predict",
     {"content": png_bytes(Image.new("RGB", (30, 30), "red"))[:60]}, 400),
    ("unknown output", "post", "/v2/models/colors/infer",
     {"json": _bytes_request(png_bytes(Image.new("RGB", (9, 9))), outputs=[{"name": "features"}])}, 400),
    ("bad classification", "post", "/v2/models/colors/infer",
     {"json": _bytes_request(png_bytes(Image.new("RGB", (9, 9))),
                             outputs=[{"name": "probabilities", "parameters": {"classification": 0}}])}, 400),
    ("bad top_k", "post", "/v1/tasks/colors:predict?top_k=0", {"content": png_bytes(Image.new("RGB", (9, 9)))}, 400),
    ("top_k not a number", "post", "/v1/tasks/colors:predict?top_k=x", {"content": b"x"}, 400),
    ("multipart without file", "post", "/v1/tasks/colors:predict", {"data": {"a": "b"}}, 400),
    ("body over limit", "post", "/v1/tasks/colors:predict", {"content": b"\0" * 300_000}, 413),
    ("decompression bomb", "post", "/v1/tasks/colors:predict", {"content": _bomb()}, 413),
    ("too many images", "post", "/v2/models/colors/infer",
     {"json": _bytes_request(*[png_bytes(Image.new("RGB", (5, 5)))] * 9)}, 413),
    ("wrong method", "get", "/v2/models/colors/infer", {}, 405),
    ("no such path", "get", "/v3/whatever", {}, 404),
]


@pytest.mark.parametrize("name,method,path,kwargs,code", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_their_4xx_and_the_server_keeps_serving(client, name, method, path, kwargs, code):
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == code, r.text
    assert isinstance(r.json().get("error"), str) and r.json()["error"]
    ok = client.post("/v1/tasks/colors:predict", content=png_bytes(Image.new("RGB", (9, 9), "blue")))
    assert ok.status_code == 200


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_repository_loads_and_unloads_tasks_without_reloading_the_backbone(exported_dir, backend, monkeypatch):
    rt = Runtime(exported_dir, tasks=["colors"], backend=backend)
    before = rt.backend.sessions["colors"] if backend == "onnx" else rt.backend.backbone

    def no_reload(*_a, **_k):
        raise AssertionError("the backbone was loaded again")

    monkeypatch.setattr(TrainingDir, "load_backbone", no_reload)
    img = png_bytes(class_image(1, np.random.default_rng(8)))

    def predict(c, task):
        return c.post(f"/v1/tasks/{task}:predict", content=img, headers={"content-type": "image/png"})

    with TestClient(create_app(rt)) as c:
        index = {m["name"]: m["state"] for m in c.post("/v2/repository/index").json()}
        assert index == {"colors": "READY", "hues": "UNAVAILABLE"}
        assert predict(c, "hues").status_code == 404
        assert c.post("/v2/repository/models/hues/load").status_code == 200
        r = predict(c, "hues")
        assert r.status_code == 200 and r.json()["label"] == rt.predict("hues", img).label
        if backend == "onnx":  # colors' session is untouched and hues reads the universal weights stored for it
            assert rt.backend.sessions["colors"] is before
            assert any(e.users == {"colors", "hues"} for e in rt.backend.store._entries.values())
        else:
            assert rt.backend.backbone is before
        assert c.post("/v2/repository/models/hues/load").status_code == 200  # already loaded: nothing to do
        assert c.post("/v2/repository/models/nope/load").status_code == 404
        assert c.post("/v2/repository/models/hues/unload").status_code == 200
        assert predict(c, "hues").status_code == 404 and predict(c, "colors").status_code == 200
        assert c.post("/v2/repository/models/hues/unload").json()["error"].startswith("task 'hues' is not loaded")


def test_overload_is_503(runtime, monkeypatch):
    app = create_app(runtime)

    def full(task, x):
        raise OverloadedError(f"task {task!r} has 512 images waiting")

    monkeypatch.setattr(app.state.batcher, "submit", full)
    with TestClient(app) as c:
        r = c.post("/v1/tasks/colors:predict", content=png_bytes(Image.new("RGB", (9, 9))))
    assert r.status_code == 503 and "waiting" in r.json()["error"]


def test_api_key_guards_everything_but_health(runtime):
    with TestClient(create_app(runtime, ServerConfig(api_key=KEY))) as c:
        assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
        for path in ("/v2", "/v2/models", "/v1/tasks", "/metrics", "/v2/models/colors"):
            r = c.get(path)
            assert r.status_code == 401 and "API key" in r.json()["error"]
        assert c.get("/v1/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/tasks", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        png = png_bytes(Image.new("RGB", (9, 9)))
        assert c.post("/v1/tasks/colors:predict", content=png).status_code == 401
        assert c.post("/v1/tasks/colors:predict", content=png, headers={"X-API-Key": KEY}).status_code == 200


def _counter(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_each_request_is_counted_once_where_it_was_refused(runtime):
    fails = 'tailorrt_request_failures_total{code="%s",task="hues"}'
    with TestClient(create_app(runtime, ServerConfig(api_key=KEY, max_body_bytes=50_000))) as c:
        auth = {"X-API-Key": KEY}
        c.post("/v2/models/hues/infer", json=_bytes_request(b"not an image"), headers=auth)  # 400 in the handler
        c.post("/v2/models/hues/infer", json=_bytes_request(b"x"))  # 401 before it
        c.post("/v2/models/hues/infer", content=b"x" * 60_000, headers=auth)  # 413 before it
        text = c.get("/metrics", headers=auth).text
        stats = c.get("/v2/models/hues/stats", headers=auth).json()["model_stats"][0]["inference_stats"]
    assert [_counter(text, fails % code) for code in (400, 401, 413)] == [1, 1, 1]
    assert _counter(text, 'tailorrt_requests_total{endpoint="v2",task="hues"}') == 3 == stats["fail"]["count"]


def test_metrics_count_requests_failures_and_batches(client):
    client.post("/v1/tasks/hues:predict", content=png_bytes(Image.new("RGB", (9, 9))))
    client.post("/v1/tasks/hues:predict", content=b"garbage")
    text = client.get("/metrics").text
    assert 'tailorrt_requests_total{endpoint="v1",task="hues"}' in text
    assert 'tailorrt_request_failures_total{code="400",task="hues"}' in text
    for name in ("tailorrt_queue_seconds_bucket", "tailorrt_compute_seconds_bucket", "tailorrt_batch_size_bucket",
                 "tailorrt_request_seconds_bucket"):
        assert f'{name}{{le="1.0",task="hues"}}' in text or f'{name}{{le="1",task="hues"}}' in text, name


def test_tailor_serve_answers_and_finishes_in_flight_requests_on_sigterm(exported_dir):
    import threading

    port = free_port()
    # a long batching delay keeps a request in flight while the server is told to stop
    proc = subprocess.Popen([str(TAILOR), "serve", "--model-dir", str(exported_dir), "--port", str(port),
                             "--max-delay-ms", "1500", "--grpc-port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answers = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=60)
        png = png_bytes(class_image(1, np.random.default_rng(9)))

        def ask():
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tasks/colors:predict?top_k=2", data=png,
                                         headers={"Content-Type": "image/png"})
            with urllib.request.urlopen(req, timeout=20) as r:
                answers.append((r.status, json.loads(r.read())))

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.5)  # the request now waits in the batcher
        proc.send_signal(signal.SIGTERM)
        t.join(20)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert answers and answers[0][0] == 200 and len(answers[0][1]["top_k"]) == 2  # finished, not dropped
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises the signal after a graceful stop
    assert "serving colors, hues (onnx backend, fp32)" in err and "Traceback" not in err


def test_tailor_predict_prints_answers(exported_dir, tmp_path):
    path = tmp_path / "x.png"
    class_image(2, np.random.default_rng(2)).save(path)
    proc = run_cli("predict", "--task", "colors", "--model-dir", str(exported_dir), "--top-k", "2", "--json",
                   str(path), check=True)
    (row,) = json.loads(proc.stdout)
    assert row["image"] == str(path) and len(row["labels"]) == 2
    bad = run_cli("predict", "--task", "colors", "--model-dir", str(exported_dir), str(tmp_path / "none.png"))
    assert bad.returncode == 1 and "no image file" in bad.stderr and "Traceback" not in bad.stderr
    assert os.path.exists(path)


def test_every_error_carries_a_real_grpc_code_and_its_http_status():
    """Each error class names its gRPC status by a name ``grpc.StatusCode`` has, and an HTTP status a server sends
    (the wire tests check what clients receive)."""
    import grpc

    from tailorrt import errors

    classes, todo = [], [errors.TailorError]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo += cls.__subclasses__()
    assert len(classes) > 10
    for cls in classes:
        assert isinstance(getattr(grpc.StatusCode, cls.grpc_code), grpc.StatusCode), cls
        assert cls.http_status in (400, 401, 404, 408, 409, 413, 500, 503) and cls.exit_code in (1, 2), cls
