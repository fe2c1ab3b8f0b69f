"""Hostile and clumsy requests get their 4xx, never a 5xx, over every transport the server has (the ASGI app in
process, and a real ``tailor serve`` on a loopback socket), and the server answers correctly afterwards.
Also: tasks whose files are corrupt load as 409, bodies that never finish time out, decodes are budgeted."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tailorrt import Runtime
from tailorrt.errors import ConfigError, InputTooLargeError, OverloadedError
from tailorrt.images import DecodeBudget
from tailorrt.limits import MIB, Limits
from tailorrt.serving.app import ServerConfig, create_app
from tailorrt.serving.batcher import BatchConfig
from tailorrt.serving.local import local_server, png_bytes
from tests.conftest import class_image, flip, one_line_error, reseal, run_cli

LIMITS = Limits(max_images=16, max_decode_bytes=256 * MIB)
BATCH = BatchConfig(max_batch=4, max_queue=12)
SERVE_ARGS = ("--max-body-mb", "1", "--max-batch", "4", "--max-queue", "12", "--max-images", "16",
              "--max-decode-mb", "256", "--body-timeout-s", "2", "--header-timeout-s", "2")


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


BOMB = _encoded(Image.new("1", (6300, 6300)), "PNG")  # 5 KB on the wire, 40 M pixels, ~480 MIB to decode
SMALL = png_bytes(Image.new("RGB", (9, 9), "blue"))


NAMES = {"BYTES": "image", "UINT8": "pixels", "FP32": "input"}


def _v2(datatype: str, shape, data, **extra) -> dict:
    return {"json": {"inputs": [{"name": NAMES[datatype], "datatype": datatype, "shape": shape, "data": data}],
                     **extra}}


def _raw(text: str) -> dict:
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def _images(*images: bytes) -> dict:
    return _v2("BYTES", [len(images)], [base64.b64encode(i).decode() for i in images])


def _chunked(total: int, chunk: int = 64 * 1024):
    head = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
    yield head
    for _ in range(total // chunk):
        yield b"\0" * chunk


INFER = "/v2/models/colors/infer"
PREDICT = "/v1/tasks/colors:predict"
HOSTILE = [
    # from the issue
    ("nested 5000 deep", INFER, _raw('{"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":'
                                     + "[" * 5000 + "]" * 5000 + "}]}"), 400, "nested"),
    ("integer of 5000 digits", INFER, _raw('{"inputs":[{"name":"pixels","datatype":"UINT8","shape":[1],"data":['
                                           + "9" * 5000 + "]}]}"), 400, "number"),
    ("1e300 as UINT8", INFER, _v2("UINT8", [1, 1, 1, 3], [1e300, 1, 1]), 400, "integers"),
    ("10**30 as UINT8", INFER, _v2("UINT8", [1, 1, 1, 3], [10**30, 1, 1]), 400, "integers"),
    ("shape product over 2**62", INFER, _v2("UINT8", [4611686018427387904, 4], [1, 2]), 413, "values"),
    ("shape 2**32 x 2**32", INFER, _v2("UINT8", [2**32, 2**32, 1, 3], [1, 2, 3]), 413, "values"),
    ("zero images UINT8", INFER, _v2("UINT8", [0, 32, 32, 3], []), 400, "no values"),
    ("zero images FP32", INFER, _v2("FP32", [0, 3, 32, 32], []), 400, "no values"),
    ("output parameters a list", INFER, {"json": {**_images(SMALL)["json"], "outputs": [
        {"name": "logits", "parameters": [1]}]}}, 400, "outputs.0.parameters"),
    ("classification true", INFER, {"json": {**_images(SMALL)["json"], "outputs": [
        {"name": "logits", "parameters": {"classification": True}}]}}, 400, "classification"),
    ("UINT8 value 1.7", INFER, _v2("UINT8", [1, 1, 1, 3], [1.7, 1, 1]), 400, "integers"),
    ("decompression bomb", INFER, _images(BOMB), 413, "decode budget"),
    ("more images than the queue holds", INFER, _images(*[SMALL] * 13), 413, "queue holds at most 12"),
    ("300 large images (refused before decoding)", INFER,
     _images(*[_encoded(Image.new("1", (2000, 2000)), "PNG")] * 300), 413, "the limit is 16"),
    ("request pixels over the limit", INFER, _images(BOMB, BOMB, BOMB), 413, "pixels together"),
    ("chunked multipart over the body limit", PREDICT,
     {"content": lambda: _chunked(3 * MIB), "headers": {"content-type": "multipart/form-data; boundary=b"}}, 413,
     "limit"),
    # our own
    ("shape of 9 dimensions", INFER, _v2("UINT8", [1] * 9, [1]), 400, "shape"),
    ("shape holding a boolean", INFER, _v2("UINT8", [True, 1, 1, 3], [1, 2, 3]), 400, "shape"),
    ("data a string", INFER, _v2("FP32", [1], "abc"), 400, "data"),
    ("data nested deeper than the shape", INFER, _v2("UINT8", [1, 3], [[[1], [2], [3]]]), 400, "deeper"),
    ("data nested unevenly", INFER, _v2("UINT8", [2, 3], [[1, 2, 3], 4, 5, 6]), 400, "mixes"),
    ("id an object", INFER, {"json": {**_images(SMALL)["json"], "id": {"a": 1}}}, 400, "id"),
    ("an output named twice", INFER, {"json": {**_images(SMALL)["json"], "outputs": [
        {"name": "logits"}, {"name": "logits"}]}}, 400, "once"),
    ("classification of a million", INFER, {"json": {**_images(SMALL)["json"], "outputs": [
        {"name": "logits", "parameters": {"classification": 10**6}}]}}, 400, "classification"),
    ("FP32 NaN literal", INFER, _raw(json.dumps(_v2("FP32", [1, 3, 16, 16], [float("nan")] + [0.0] * 767)["json"])),
     400, "NaN"),
    ("FP32 over float32's range", INFER, _v2("FP32", [1, 3, 16, 16], [1e39] + [0.0] * 767), 400, "NaN or infinity"),
    ("UINT8 nulls", INFER, _v2("UINT8", [1, 1, 1, 3], [None, 1, 1]), 400, "integers"),
    ("TIFF image (format not served)", INFER, _images(_encoded(Image.new("RGB", (9, 9)), "TIFF")), 400,
     "not a PNG/JPEG"),
    ("EPS upload (format not served)", PREDICT, {"content": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n"},
     400, "not a PNG/JPEG"),
]


@pytest.fixture(scope="module")
def runtime(exported_dir):
    return Runtime(exported_dir, backend="onnx", limits=LIMITS)


@pytest.fixture(scope="module", params=["asgi", "http"])
def client(request, runtime, exported_dir):
    if request.param == "asgi":
        app = create_app(runtime, ServerConfig(max_body_bytes=MIB, body_timeout_s=2, batch=BATCH))
        with TestClient(app) as c:
            yield c
    else:
        with local_server(str(exported_dir), *SERVE_ARGS) as url, httpx.Client(base_url=url, timeout=60) as c:
            yield c


@pytest.mark.parametrize("name,path,kwargs,code,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_their_4xx_and_the_server_answers_right_after(client, runtime, name, path, kwargs,
                                                                         code, message):
    r = client.post(path, **{k: v() if callable(v) else v for k, v in kwargs.items()})  # a fresh body stream
    assert r.status_code == code, r.text
    assert message in r.json()["error"], r.json()
    img = class_image(1, np.random.default_rng(3))
    ok = client.post(PREDICT + "?top_k=2", content=png_bytes(img))
    assert ok.status_code == 200 and ok.json()["label"] == runtime.predict("colors", img).label


def test_nested_and_flat_data_give_the_same_answer(runtime):
    arr = np.asarray(class_image(2, np.random.default_rng(4)))
    with TestClient(create_app(runtime)) as c:
        flat = c.post(INFER, **_v2("UINT8", [1, *arr.shape], arr.ravel().tolist()))
        nested = c.post(INFER, **_v2("UINT8", [1, *arr.shape], [arr.tolist()]))
    assert flat.status_code == nested.status_code == 200
    assert flat.json()["outputs"] == nested.json()["outputs"]


def test_nothing_is_decoded_before_the_count_check(runtime, monkeypatch):
    import tailorrt.images

    def refuse(*_a, **_k):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(tailorrt.images, "open_image", refuse)
    with TestClient(create_app(runtime, ServerConfig(max_body_bytes=MIB))) as c:
        r = c.post(INFER, **_images(*[SMALL] * 17))
    assert r.status_code == 413 and "the limit is 16" in r.json()["error"]


def test_small_bodies_are_parsed_on_the_event_loop_images_decoded_off_it_and_large_answers_encoded_off_it(
        runtime, monkeypatch):
    """A body of at most ``INLINE_PARSE_BYTES`` is parsed on the event loop, a larger one in a worker thread; images
    are decoded in the batcher's decode threads, never on the event loop; an answer runs on the event loop only
    while it holds at most ``INLINE_VALUES`` numbers (a few tens of microseconds), in a worker thread beyond."""
    import tailorrt.serving.app as app_module
    import tailorrt.serving.service as service_module

    threads: dict[str, list] = {}
    for module, name in ((app_module, "parse_http"), (app_module, "http_response"),
                         (service_module, "request_batch")):
        real = getattr(module, name)

        def spy(*a, _real=real, _name=name, **k):
            threads.setdefault(_name, []).append(threading.current_thread())
            return _real(*a, **k)

        monkeypatch.setattr(module, name, spy)
    with TestClient(create_app(runtime)) as c:
        loop_thread = c.portal.call(threading.current_thread)  # the thread the event loop runs in
        assert c.post(INFER, **_images(SMALL)).status_code == 200  # 1 image: a handful of numbers
        monkeypatch.setattr(service_module, "INLINE_VALUES", 0)  # as if the answer were large
        monkeypatch.setattr(app_module, "INLINE_PARSE_BYTES", 0)  # and the body
        assert c.post(INFER, **_images(SMALL)).status_code == 200
    assert [t is loop_thread for t in threads["parse_http"]] == [True, False]
    assert [t is loop_thread for t in threads["http_response"]] == [True, False]
    assert [t.name.startswith("decode") for t in threads["request_batch"]] == [True, True]


# ---------------------------------------------------------------------------------------------- decode budget


def test_decode_budget_refuses_what_never_fits_and_times_out_what_waits():
    budget = DecodeBudget(100, wait_s=0.05)
    with pytest.raises(InputTooLargeError, match="over the decode budget"), budget.reserve(101):
        pass
    with budget.reserve(80):
        with pytest.raises(OverloadedError, match="retry later"), budget.reserve(30):
            pass
        with budget.reserve(20):
            assert budget.used == 100
    assert budget.used == 0 and budget.peak == 100


def test_concurrent_bombs_stay_within_the_decode_budget(exported_dir):
    bomb = _encoded(Image.new("1", (3000, 3000)), "PNG")  # ~110 MIB of decode each
    rt = Runtime(exported_dir, tasks=["colors"], backend="onnx",
                 limits=Limits(max_decode_bytes=150 * MIB, decode_wait_s=0.05))
    with TestClient(create_app(rt)) as c, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: c.post(PREDICT, content=bomb), range(8)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 503} and 200 in codes, codes
    assert rt.decode_budget.peak <= 150 * MIB and rt.decode_budget.used == 0
    assert all(r.headers["retry-after"] == "1" for r in answers if r.status_code == 503)


# ---------------------------------------------------------------------------------------------- repository


CORRUPT_TASKS = [
    ("task.json not JSON", "both", lambda d: (d / "tasks/hues/task.json").write_text("{nope")),
    ("task.json without classes", "both", lambda d: reseal(d / "tasks/hues/task.json", drop=("classes",))),
    ("task.json with classes null", "both", lambda d: reseal(d / "tasks/hues/task.json", classes=None)),
    ("task.json edited by hand", "both", lambda d: (d / "tasks/hues/task.json").write_text(
        (d / "tasks/hues/task.json").read_text().replace('"class0"', '"renamed"', 1))),
    ("pack truncated", "torch", lambda d: (d / "tasks/hues/task.safetensors").write_bytes(
        (d / "tasks/hues/task.safetensors").read_bytes()[:100])),
    ("pack bytes flipped", "torch", lambda d: flip(d / "tasks/hues/task.safetensors", count=4096)),
    ("pack from another backbone", "both", lambda d: reseal(d / "tasks/hues/task.json", backbone_sha256="0" * 64)),
    ("graph bytes flipped", "onnx", lambda d: flip(d / "onnx/hues.onnx")),
]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("name,applies,corrupt", CORRUPT_TASKS, ids=[c[0] for c in CORRUPT_TASKS])
def test_loading_a_corrupt_task_is_409_and_the_others_keep_serving(exported_dir, tmp_path, backend, name, applies,
                                                                  corrupt):
    if applies not in ("both", backend):
        pytest.skip(f"the {backend} backend does not read that file")
    copy = tmp_path / "m"
    shutil.copytree(exported_dir, copy)
    corrupt(copy)
    rt = Runtime(copy, tasks=["colors"], backend=backend)
    with TestClient(create_app(rt)) as c:
        r = c.post("/v2/repository/models/hues/load")
        assert r.status_code == 409, r.text
        assert "hues" in r.json()["error"]
        assert c.post(PREDICT, content=SMALL).status_code == 200
        assert c.get("/v2/models").json()["models"] == [{"name": "colors", "versions": ["1"], "state": "READY"}]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_unload_and_load_while_predicting_never_500(exported_dir, backend):
    rt = Runtime(exported_dir, backend=backend)
    codes: list[int] = []
    stop = threading.Event()
    with TestClient(create_app(rt, ServerConfig(batch=BatchConfig(max_delay_ms=1)))) as c:
        def hammer():
            while not stop.is_set():
                codes.append(c.post("/v1/tasks/hues:predict", content=SMALL).status_code)

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for w in workers:
            w.start()
        for _ in range(6):
            assert c.post("/v2/repository/models/hues/unload").status_code == 200
            assert c.post("/v2/repository/models/hues/load").status_code == 200
        stop.set()
        for w in workers:
            w.join(30)
    assert codes and set(codes) <= {200, 404}, sorted(set(codes))


# ---------------------------------------------------------------------------------------------- sockets


def _slow_request(port: int, body_sent: bytes, length: int | str) -> socket.socket:
    """A request whose headers promise ``length`` bytes of body, of which only ``body_sent`` come."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {length}\r\n\r\n".encode() + body_sent)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_requests_that_never_finish_time_out_and_close(exported_dir):
    with local_server(str(exported_dir), *SERVE_ARGS) as url:
        port = int(url.rsplit(":", 1)[1])
        start = time.monotonic()
        silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
        half = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
        for s in half:
            s.sendall(b"POST /v1/tasks/colors:predict HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        slow = [_slow_request(port, b'{"inputs"', 1000) for _ in range(20)]
        answers = [_read_all(s) for s in slow]  # returns when the server closes the connection
        took = time.monotonic() - start
        assert [_read_all(s) for s in silent + half] == [b""] * 20  # closed by the server, without an answer
        for s in slow + silent + half:
            s.close()
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0][:200]
        assert b"did not arrive within 2 s" in answers[0]
        assert took < 15
        huge = _read_all(_slow_request(port, b"x", 10**12))  # refused from its headers, at once
        assert huge.startswith(b"HTTP/1.1 413") and b"over the limit" in huge
        absurd = _read_all(_slow_request(port, b"x", "1" + "0" * 20))  # uvicorn's parser refuses it first
        assert absurd.startswith(b"HTTP/1.1 4")
        r = httpx.post(f"{url}{PREDICT}", content=SMALL, timeout=30)
        assert r.status_code == 200


# ---------------------------------------------------------------------------------------------- configuration


def test_an_empty_api_key_is_refused_not_ignored(exported_dir):
    with pytest.raises(ConfigError, match="empty"):
        ServerConfig(api_key="")
    line = one_line_error(run_cli("serve", "--model-dir", str(exported_dir), "--api-key", ""))
    assert "API key is empty" in line
    import os
    import subprocess

    from tests.conftest import TAILOR

    proc = subprocess.run([str(TAILOR), "serve", "--model-dir", str(exported_dir)], capture_output=True, text=True,
                          env={**os.environ, "TAILOR_API_KEY": ""}, timeout=120)
    assert "API key is empty" in one_line_error(proc)


def test_a_broken_task_at_startup_is_one_line(exported_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(exported_dir, copy)
    reseal(copy / "tasks" / "hues" / "task.json", classes=None)
    line = one_line_error(run_cli("serve", "--model-dir", str(copy)))
    assert "task.json" in line and "classes" in line
    line = one_line_error(run_cli("serve", "--model-dir", str(exported_dir), "--image-formats", "PNG,NOPE"))
    assert "unknown image format" in line


def test_a_client_gone_mid_body_is_counted_not_logged_as_a_crash(runtime):
    """A client that disconnects while sending its body (a load generator stopping, a dropped phone) was an
    unhandled ClientDisconnect: a 12 KB traceback in the log per request. Now it is answered quietly (nobody reads
    it) and counted as 499 in the metrics."""
    import asyncio

    app = create_app(runtime)
    messages = iter([{"type": "http.request", "body": b'{"inputs": [', "more_body": True},
                     {"type": "http.disconnect"}])
    sent: list[dict] = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": INFER, "raw_path": INFER.encode(), "query_string": b"", "root_path": "", "state": {},
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}

    async def call():
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)  # raised ClientDisconnect before

    asyncio.run(call())
    assert sent[0]["status"] == 499
    assert 'tailorrt_request_failures_total{code="499",task="colors"} 1.0' in app.state.metrics.render().decode()
