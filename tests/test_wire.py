"""The wire formats real clients use, driven by the official Triton clients (``tritonclient.http`` and
``tritonclient.grpc``) against a real ``tailor serve`` with an API key: health, metadata, model configuration,
statistics, the model repository, and inference with each input (encoded images as binary BYTES, UINT8
pixels, FP32 tensors) and binary or JSON outputs, every answer checked against ``Runtime.predict``. Then bad
binary and gRPC input, which gets a clean 4xx or gRPC status while the server stays up."""

from __future__ import annotations

import gzip
import json
import struct
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tailorrt import Runtime
from tailorrt.serving.local import free_port, png_bytes, serve_process
from tests.conftest import class_image

KEY = "wire-key"
AUTH = {"x-api-key": KEY}


def auth() -> dict:
    """The key as headers, a fresh dict per call (tritonclient.http adds its own headers to the one it is given)."""
    return dict(AUTH)

LIMIT = 1024 * 1024  # --max-body-mb 1


class Server:
    def __init__(self, url: str, grpc_port: int) -> None:
        self.url, self.grpc_url = url, f"127.0.0.1:{grpc_port}"
        self.http = httpclient.InferenceServerClient(url.removeprefix("http://"), concurrency=4)
        self.grpc = grpcclient.InferenceServerClient(self.grpc_url)
        self.channel = grpc.insecure_channel(self.grpc_url)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)


@pytest.fixture(scope="module")
def server(exported_dir):
    gport = free_port()
    with serve_process(str(exported_dir), "--api-key", KEY, "--grpc-port", str(gport), "--max-body-mb", "1",
                       "--max-images", "8", "--max-delay-ms", "2") as (url, proc):
        s = Server(url, gport)
        yield s
        s.http.close()
        s.grpc.close()
        s.channel.close()
        assert proc.poll() is None, "the server died during the tests"


@pytest.fixture(scope="module")
def runtime(exported_dir):
    return Runtime(exported_dir, backend="onnx")


def _image(label: int, seed: int) -> np.ndarray:
    return np.array(class_image(label, np.random.default_rng(seed), size=20))


def _inputs(module, kind: str, images: list[np.ndarray], runtime: Runtime, task: str, binary: bool = True):
    """One tritonclient input of ``kind`` holding ``images``."""
    if kind == "image":
        arr = np.array([png_bytes(i) for i in images], dtype=np.object_)
        inp = module.InferInput("image", list(arr.shape), "BYTES")
    elif kind == "pixels":
        arr = np.stack(images)
        inp = module.InferInput("pixels", list(arr.shape), "UINT8")
    else:
        arr = runtime.preprocess(task, images)
        inp = module.InferInput("input", list(arr.shape), "FP32")
    if module is httpclient:
        inp.set_data_from_numpy(arr, binary_data=binary)
    else:
        inp.set_data_from_numpy(arr)
    return [inp]


def _want(runtime: Runtime, task: str, images: list[np.ndarray]) -> np.ndarray:
    """Every class's probability, best first as Runtime.predict orders them."""
    preds = runtime.predict(task, images, top_k=len(runtime.task(task).classes))
    out = np.zeros((len(images), len(runtime.task(task).classes)))
    for row, p in zip(out, preds):
        row[p.indices] = p.scores
    return out


def test_health_metadata_and_config_agree_over_both_clients(server, runtime):
    h, g = server.http, server.grpc
    assert h.is_server_live() and h.is_server_ready() and g.is_server_live() and g.is_server_ready()  # no key needed
    assert h.is_model_ready("hues", headers=auth()) and g.is_model_ready("hues", headers=auth())
    assert not g.is_model_ready("nope", headers=auth()) and not h.is_model_ready("nope", headers=auth())
    meta = h.get_server_metadata(headers=auth())
    assert meta["extensions"] == g.get_server_metadata(headers=auth(), as_json=True)["extensions"]
    assert {"binary_tensor_data", "statistics", "model_configuration", "classification"} <= set(meta["extensions"])

    hm = h.get_model_metadata("hues", headers=auth())
    gm = g.get_model_metadata("hues", headers=auth(), as_json=True)
    names = [i["name"] for i in hm["inputs"]]
    assert names == ["image", "pixels", "input"] == [i["name"] for i in gm["inputs"]]
    assert [i["datatype"] for i in hm["inputs"]] == ["BYTES", "UINT8", "FP32"]
    assert [int(d) for d in gm["inputs"][2]["shape"]] == hm["inputs"][2]["shape"] == [-1, 3, 16, 16]
    assert hm["outputs"][1] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}

    hc = h.get_model_config("hues", headers=auth())
    gc = g.get_model_config("hues", headers=auth(), as_json=True)["config"]
    json_format.ParseDict(hc, model_config_pb2.ModelConfig())  # Triton's schema: every field known
    assert hc["max_batch_size"] == gc["max_batch_size"] == 32
    assert [i["name"] for i in hc["input"]] == names and hc["input"][2]["dims"] == [3, 16, 16]
    assert hc["output"][0]["dims"] == [4] and hc["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert int(gc["dynamic_batching"]["default_queue_policy"]["max_queue_size"]) == 512
    assert hc["parameters"]["classes"]["string_value"].split(",") == runtime.task("hues").classes


@pytest.mark.parametrize("kind", ["image", "pixels", "input"])
def test_infer_with_each_input_over_both_clients_equals_runtime(server, runtime, kind):
    images = [_image(i % 4, 10 + i) for i in range(3)]
    want = _want(runtime, "hues", images)
    for module, client in ((httpclient, server.http), (grpcclient, server.grpc)):
        outputs = [module.InferRequestedOutput("probabilities"), module.InferRequestedOutput("logits")]
        r = client.infer("hues", _inputs(module, kind, images, runtime, "hues"), outputs=outputs, headers=auth(),
                         request_id="r7")
        assert r.get_response()["id"] == "r7" if module is httpclient else r.get_response().id == "r7"
        np.testing.assert_allclose(r.as_numpy("probabilities"), want, atol=1e-5)
        assert r.as_numpy("logits").shape == (3, 4) and r.as_numpy("logits").dtype == np.float32
        top = client.infer("hues", _inputs(module, kind, images, runtime, "hues"), headers=auth(),
                           outputs=[module.InferRequestedOutput("probabilities", class_count=2)])
        rows = top.as_numpy("probabilities")
        assert rows.shape == (3, 2)
        for row, p in zip(rows, runtime.predict("hues", images, top_k=2)):
            parts = [c.decode().split(":", 2) for c in row]
            assert [int(i) for _, i, _ in parts] == p.indices and [l for _, _, l in parts] == p.labels
            np.testing.assert_allclose([float(s) for s, _, _ in parts], p.scores, atol=1e-5)


def test_http_json_outputs_and_json_inputs_mix_with_binary(server, runtime):
    images = [_image(1, 3)]
    want = _want(runtime, "colors", images)
    for binary_in in (True, False):
        if not binary_in:  # a JSON client cannot send encoded images (not UTF-8); pixels as JSON it can
            inputs = _inputs(httpclient, "pixels", images, runtime, "colors", binary=False)
        else:
            inputs = _inputs(httpclient, "image", images, runtime, "colors")
        r = server.http.infer("colors", inputs, headers=auth(),
                              outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)])
        assert "data" in r.get_response()["outputs"][0]  # answered as JSON
        np.testing.assert_allclose(r.as_numpy("probabilities"), want, atol=1e-5)
    r = server.http.infer("colors", _inputs(httpclient, "image", images, runtime, "colors"), headers=auth())
    assert {o["name"] for o in r.get_response()["outputs"]} == {"logits", "probabilities"}  # all, binary
    assert all("binary_data_size" in o["parameters"] for o in r.get_response()["outputs"])


def test_compressed_requests_are_read_within_the_body_limit(server, runtime):
    images = [_image(2, 6)]
    want = _want(runtime, "colors", images)
    for algorithm in ("gzip", "deflate"):
        r = server.http.infer("colors", _inputs(httpclient, "image", images, runtime, "colors"), headers=auth(),
                              request_compression_algorithm=algorithm)
        np.testing.assert_allclose(r.as_numpy("probabilities"), want, atol=1e-5)
    bomb = gzip.compress(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1],
                                                 "data": [0.0]}], "pad": " " * (2 * LIMIT)}).encode())
    r = httpx.post(f"{server.url}/v2/models/colors/infer", content=bomb, headers={"Content-Encoding": "gzip", **AUTH})
    assert len(bomb) < 10_000 and r.status_code == 413 and "decompresses" in r.json()["error"]
    cut = gzip.compress(b'{"inputs": []}' * 50)[:-12]
    r = httpx.post(f"{server.url}/v2/models/colors/infer", content=cut, headers={"Content-Encoding": "gzip", **AUTH})
    assert r.status_code == 400 and "truncated" in r.json()["error"]
    r = httpx.post(f"{server.url}/v2/models/colors/infer", content=b"{}", headers={"Content-Encoding": "br", **AUTH})
    assert r.status_code == 400 and "not supported" in r.json()["error"]


def _metric(server: Server, prefix: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_api_key_is_required_over_both_transports(server, runtime):
    images = [_image(0, 1)]
    denied = 'tailorrt_request_failures_total{code="401",task="hues"}'
    before = _metric(server, denied)
    with pytest.raises(InferenceServerException, match="API key"):
        server.http.infer("hues", _inputs(httpclient, "image", images, runtime, "hues"))
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        server.grpc.infer("hues", _inputs(grpcclient, "image", images, runtime, "hues"))
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        server.grpc.get_model_config("hues", headers={"x-api-key": "wrong"})
    assert server.grpc.get_model_config("hues", headers={"authorization": f"Bearer {KEY}"}).config.name == "hues"
    assert _metric(server, denied) == before + 2  # each denied infer counted once, over either transport


def test_statistics_over_both_clients_follow_the_metrics(server, runtime):
    images = [_image(2, 4)]
    server.grpc.infer("hues", _inputs(grpcclient, "pixels", images, runtime, "hues"), headers=auth())
    with pytest.raises(InferenceServerException):  # a failure, counted as one
        server.grpc.infer("hues", [grpcclient.InferInput("pixels", [1, 2, 2, 3], "UINT8")], headers=auth())
    h = server.http.get_inference_statistics("hues", headers=auth())["model_stats"][0]
    g = server.grpc.get_inference_statistics("hues", headers=auth(), as_json=True)["model_stats"][0]
    every = server.http.get_inference_statistics(headers=auth())["model_stats"]
    assert {m["name"] for m in every} == {"colors", "hues"}
    req = urllib.request.Request(f"{server.url}/metrics", headers=AUTH)
    text = urllib.request.urlopen(req).read().decode()

    def sample(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") and 'task="hues"' in line)

    stats = h["inference_stats"]
    assert stats["success"]["count"] + stats["fail"]["count"] == sample("tailorrt_request_seconds_count")
    assert stats["fail"]["count"] == sample("tailorrt_request_failures_total") >= 1
    assert h["execution_count"] == sample("tailorrt_batch_size_count") and h["inference_count"] == sample(
        "tailorrt_batch_size_sum")
    assert stats["queue"]["count"] == sample("tailorrt_queue_seconds_count") and stats["compute_infer"]["ns"] > 0
    assert int(g["execution_count"]) == h["execution_count"] and int(g["inference_count"]) >= h["inference_count"]
    assert sum(b["compute_infer"]["count"] for b in h["batch_stats"]) == h["execution_count"]


def test_repository_and_a_task_unloaded_while_requests_arrive(server, runtime):
    index = {m["name"]: m["state"] for m in server.grpc.get_model_repository_index(headers=auth(), as_json=True)[
        "models"]}
    assert index == {"colors": "READY", "hues": "READY"}
    images = [_image(3, 5)]
    want = _want(runtime, "hues", images)
    stop, answers = threading.Event(), []

    def ask(module):  # a client per thread: tritonclient.http's connection pool is not for several threads
        client = module.InferenceServerClient(server.url.removeprefix("http://") if module is httpclient
                                              else server.grpc_url)
        while not stop.is_set():
            try:
                r = client.infer("hues", _inputs(module, "image", images, runtime, "hues"), headers=auth())
                answers.append(np.abs(r.as_numpy("probabilities") - want).max())
            except InferenceServerException as e:
                answers.append(str(e))
        client.close()

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 60
        while len(answers) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, m) for m in (httpclient, grpcclient) * 2]
        wait_for(8)
        server.http.unload_model("hues", headers=auth())
        wait_for(len(answers) + 8)
        stop.set()
        for f in futures:
            f.result(timeout=60)
    numbers = [a for a in answers if not isinstance(a, str)]
    errors = [a for a in answers if isinstance(a, str)]
    assert numbers and max(numbers) < 1e-5  # every answer given is right
    assert errors and all("not loaded" in e or "being unloaded" in e for e in errors), set(errors)
    assert any("StatusCode.NOT_FOUND" in e for e in errors) and any("[404]" in e for e in errors)
    index = {m["name"]: m["state"] for m in server.http.get_model_repository_index(headers=auth())}
    assert index == {"colors": "READY", "hues": "UNAVAILABLE"}
    server.grpc.load_model("hues", headers=auth())
    r = server.grpc.infer("hues", _inputs(grpcclient, "image", images, runtime, "hues"), headers=auth())
    np.testing.assert_allclose(r.as_numpy("probabilities"), want, atol=1e-5)
    with pytest.raises(InferenceServerException, match="no task 'nope'"):
        server.grpc.load_model("nope", headers=auth())
    server.grpc.unload_model("hues", headers=auth())  # and the other way round
    assert not server.http.is_model_ready("hues", headers=auth())
    server.http.load_model("hues", headers=auth())
    assert server.grpc.is_model_ready("hues", headers=auth())


def _binary(header: dict, blob: bytes, header_length: int | None = None) -> dict:
    text = json.dumps(header).encode()
    n = len(text) if header_length is None else header_length
    return {"content": text + blob, "headers": {"Inference-Header-Content-Length": str(n), **AUTH}}


PNG = png_bytes(class_image(0, np.random.default_rng(0), size=12))
ONE_PNG = struct.pack("<I", len(PNG)) + PNG


def _image_input(size: int, shape=(1,), datatype="BYTES", name="image") -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(shape),
                        "parameters": {"binary_data_size": size}}]}


BAD_HTTP = [
    ("header length larger than the body", _binary(_image_input(len(ONE_PNG)), ONE_PNG, 10**6), "longer than the body"),
    ("header length not a number", {**_binary(_image_input(len(ONE_PNG)), ONE_PNG),
                                    "headers": {"Inference-Header-Content-Length": "-5", **AUTH}}, "byte count"),
    ("binary_data_size past the end", _binary(_image_input(len(ONE_PNG) + 9), ONE_PNG), "declares"),
    ("binary_data_size short of the body", _binary(_image_input(len(ONE_PNG) - 1), ONE_PNG), "does not add up"),
    ("BYTES length prefix past the end", _binary(_image_input(12), struct.pack("<I", 999) + PNG[:8]),
     "past the end"),
    ("BYTES elements fewer than the shape", _binary(_image_input(len(ONE_PNG), shape=(2,)), ONE_PNG),
     "ends before element 1"),
    ("UINT8 shape not matching its bytes", _binary(_image_input(10, (1, 2, 2, 3), "UINT8", "pixels"), bytes(10)),
     "needs 12 bytes"),
    ("FP32 shape not matching its bytes", _binary(_image_input(12, (1, 3, 16, 16), "FP32", "input"), bytes(12)),
     "needs 3,072 bytes"),
    ("unknown datatype", _binary(_image_input(8, (2,), "INT32", "image"), bytes(8)), "datatype"),
    ("data and binary data", _binary({"inputs": [{**_image_input(len(ONE_PNG))["inputs"][0], "data": ["x"]}]},
                                     ONE_PNG), "both"),
    ("an input with neither", _binary({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}, b""),
     "neither"),
    ("binary output flag not a boolean", _binary({**_image_input(len(ONE_PNG)), "parameters": {
        "binary_data_output": "yes"}}, ONE_PNG), "binary_data_output"),
]


@pytest.mark.parametrize("name,kwargs,message", BAD_HTTP, ids=[c[0] for c in BAD_HTTP])
def test_bad_binary_http_gets_400_and_the_server_answers_after(server, runtime, name, kwargs, message):
    r = httpx.post(f"{server.url}/v2/models/colors/infer", **kwargs)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    binary_out = {**_image_input(len(ONE_PNG)), "parameters": {"binary_data_output": True}}
    ok = httpx.post(f"{server.url}/v2/models/colors/infer", **_binary(binary_out, ONE_PNG))
    assert ok.status_code == 200 and ok.headers["Inference-Header-Content-Length"]
    header = json.loads(ok.content[:int(ok.headers["Inference-Header-Content-Length"])])
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [12, 12]


def _grpc_request(datatype="BYTES", shape=(1,), raw=(ONE_PNG,), name="image", **contents):
    tensor = service_pb2.ModelInferRequest().InferInputTensor(name=name, datatype=datatype, shape=list(shape))
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return service_pb2.ModelInferRequest(model_name="colors", inputs=[tensor], raw_input_contents=list(raw))


BAD_GRPC = [
    ("message over the limit", _grpc_request(raw=[b"\0" * (LIMIT + 10)]), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ("unknown datatype", _grpc_request("INT32", (2,), [bytes(8)]), grpc.StatusCode.INVALID_ARGUMENT, "datatype"),
    ("BYTES length prefix past the end", _grpc_request(raw=[struct.pack("<I", 999) + PNG[:8]]),
     grpc.StatusCode.INVALID_ARGUMENT, "past the end"),
    ("UINT8 shape not matching its bytes", _grpc_request("UINT8", (1, 2, 2, 3), [bytes(10)], "pixels"),
     grpc.StatusCode.INVALID_ARGUMENT, "needs 12 bytes"),
    ("raw contents for no input", _grpc_request(raw=[ONE_PNG, ONE_PNG]), grpc.StatusCode.INVALID_ARGUMENT,
     "raw_input_contents"),
    ("typed contents in the wrong field", _grpc_request("UINT8", (1, 1, 1, 3), [], "pixels", int_contents=[1, 2, 3]),
     grpc.StatusCode.INVALID_ARGUMENT, "uint_contents"),
    ("typed UINT8 out of range", _grpc_request("UINT8", (1, 1, 1, 3), [], "pixels", uint_contents=[1, 2, 300]),
     grpc.StatusCode.INVALID_ARGUMENT, "0..255"),
    ("negative shape", _grpc_request("BYTES", (-1,)), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    ("unknown task", service_pb2.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND, "not loaded"),
    ("too many images", _grpc_request(shape=(9,), raw=[ONE_PNG * 9]), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "limit is 8"),
]


@pytest.mark.parametrize("name,request_,code,message", BAD_GRPC, ids=[c[0] for c in BAD_GRPC])
def test_bad_grpc_gets_its_status_and_the_server_answers_after(server, name, request_, code, message):
    with pytest.raises(grpc.RpcError) as e:
        server.stub.ModelInfer(request_, metadata=tuple(AUTH.items()), timeout=30)
    assert e.value.code() == code and message in e.value.details(), e.value.details()
    ok = server.stub.ModelInfer(_grpc_request(), metadata=tuple(AUTH.items()), timeout=30)
    assert [o.name for o in ok.outputs] == ["logits", "probabilities"] and len(ok.raw_output_contents[1]) == 12


def test_typed_grpc_contents_equal_raw(server, runtime):
    arr = _image(2, 8)
    typed = server.stub.ModelInfer(_grpc_request("UINT8", (1, *arr.shape), [], "pixels",
                                                 uint_contents=arr.ravel().tolist()), metadata=tuple(AUTH.items()))
    raw = server.stub.ModelInfer(_grpc_request("UINT8", (1, *arr.shape), [arr.tobytes()], "pixels"),
                                 metadata=tuple(AUTH.items()))
    png = server.stub.ModelInfer(_grpc_request(raw=[], bytes_contents=[png_bytes(arr)]), metadata=tuple(AUTH.items()))
    want = _want(runtime, "colors", [arr])
    for r in (typed, raw, png):
        np.testing.assert_allclose(np.frombuffer(r.raw_output_contents[1], "<f4").reshape(1, 3), want, atol=1e-5)


def test_openapi_describes_the_infer_bodies(server):
    schema = httpx.get(f"{server.url}/openapi.json", headers=auth()).json()
    post = schema["paths"]["/v2/models/{task}/infer"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/InferRequest"}
    assert "application/octet-stream" in post["requestBody"]["content"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/InferResponse")
    components = schema["components"]["schemas"]
    assert {"InferRequest", "InferInput", "RequestedOutput", "InferResponse", "OutputTensor"} <= set(components)
    assert components["InferInput"]["properties"]["name"]["enum"] == ["image", "pixels", "input"]


def test_serve_refuses_a_grpc_port_in_use_in_one_line(exported_dir):
    import socket

    from tests.conftest import one_line_error, run_cli

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = run_cli("serve", "--model-dir", str(exported_dir), "--port", str(free_port()), "--grpc-port", str(port))
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in one_line_error(proc)


def test_the_servers_protocol_descriptors_are_the_official_clients():
    """serving/triton/*.desc (what the server builds its messages from, without tritonclient) are the compiled
    protocol of the installed tritonclient, byte for byte (after a tritonclient upgrade:
    ``python -m tailorrt.serving.triton_grpc`` rewrites them)."""
    from importlib import resources

    from tritonclient.grpc import model_config_pb2

    from tailorrt.serving.triton_grpc import FILES, protocol

    folder = resources.files("tailorrt.serving") / "triton"
    for name, module in (("model_config.desc", model_config_pb2), ("grpc_service.desc", service_pb2)):
        assert name in FILES and folder.joinpath(name).read_bytes() == module.DESCRIPTOR.serialized_pb, name
    ours = {m.name for m in protocol().service.methods}
    assert ours == set(service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name)
