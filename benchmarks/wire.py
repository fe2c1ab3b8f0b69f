"""The same requests over the three wire formats of ``tailor serve``, side by side in one run: KServe v2 JSON
(images as base64 strings, tensors as number lists), HTTP with Triton's binary tensor data extension, and gRPC.

    python benchmarks/wire.py                      # 2000 requests at 16 concurrency, both cases below
    python benchmarks/wire.py --requests 400 --out /tmp/wire.json

Two cases, each on its own server over a random model directory (``tailorrt.training.synthetic``; the torch backend):

- ``32 px image``: the embedded backbone's 32 px task, one PNG per request as the ``image`` (BYTES) input;
- ``224 px FP32``: a preprocessed ``[1,3,224,224]`` float tensor per request as the ``input`` (FP32) input, on
  the tiny backbone so that the wire, not the network, is what is measured (600 KB of floats per request).

Request bodies are built before the clock starts (the same 100 images cycled), each client thread keeps one
connection (``http.client`` keep-alive; one gRPC channel per thread through the generated stub, as
``tritonclient.grpc`` uses it), and every answer's top class is checked against ``Runtime.predict``. The
transports take turns in ``--rounds`` rounds so that machine noise hits them alike; req/s is over all rounds,
p50/p99 over every request. The server's own statistics (Triton's extension, read before and after each
turn) say where its time went: decoding inputs, waiting in the queue, building answers, and the batches run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tailorrt import Runtime
from tailorrt.serving.local import free_port, png_bytes, run_threads, serve_process
from tailorrt.serving.protocol import pack_bytes
from tailorrt.training.synthetic import make_model_dir

HEADER = "Inference-Header-Content-Length"
TRANSPORTS = ("json", "binary", "grpc")


def _images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _bodies(kind: str, items: list) -> dict[str, list]:
    """Per transport, one prebuilt request per item: (body, headers) for HTTP, a ModelInferRequest for gRPC."""
    out: dict[str, list] = {t: [] for t in TRANSPORTS}
    want = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    for item in items:
        if kind == "image":
            name, datatype, shape, raw = "image", "BYTES", [1], pack_bytes([item])
            data = [base64.b64encode(item).decode()]
        else:
            name, datatype, shape, raw = "input", "FP32", list(item.shape), item.astype("<f4").tobytes()
            data = [round(float(v), 7) for v in item.ravel()]
        body = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}],
                           "outputs": [{"name": "probabilities"}]}).encode()
        out["json"].append((body, {"Content-Type": "application/json"}))
        header = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                         "parameters": {"binary_data_size": len(raw)}}], "outputs": want}).encode()
        out["binary"].append((header + raw, {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}))
        tensor = service_pb2.ModelInferRequest().InferInputTensor(name=name, datatype=datatype, shape=shape)
        out["grpc"].append(service_pb2.ModelInferRequest(
            model_name="synthetic-0", inputs=[tensor], raw_input_contents=[raw],
            outputs=[service_pb2.ModelInferRequest().InferRequestedOutputTensor(name="probabilities")]))
    return out


def _top(transport: str, answer) -> int:
    """The top class of an answer."""
    if transport == "grpc":
        return int(np.frombuffer(answer.raw_output_contents[0], "<f4").argmax())
    body, header = answer
    if header is None:
        return int(np.argmax(json.loads(body)["outputs"][0]["data"]))
    return int(np.frombuffer(body[int(header):], "<f4").argmax())


def _client(transport: str, url: str, grpc_url: str) -> Callable:
    """A function sending one prebuilt request over a connection of its own."""
    if transport == "grpc":
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_url))
        return lambda request: stub.ModelInfer(request, timeout=60)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def send(request):
        body, headers = request
        conn.request("POST", "/v2/models/synthetic-0/infer", body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {data[:200]!r}")
        return data, r.getheader(HEADER)

    return send


def _run(transport: str, requests: list, expected: list[int], count: int, clients: int, url: str, grpc_url: str
         ) -> tuple[float, list[float], int]:
    """Send ``count`` requests from ``clients`` threads: (seconds, latencies, wrong answers)."""
    lock, cursor, latencies, wrong = threading.Lock(), iter(range(count)), [], [0]

    def work() -> None:
        send = _client(transport, url, grpc_url)
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            t0 = time.perf_counter()
            answer = send(requests[i % len(requests)])
            dt = time.perf_counter() - t0
            ok = _top(transport, answer) == expected[i % len(requests)]
            with lock:
                latencies.append(dt)
                wrong[0] += not ok

    return run_threads(work, clients), latencies, wrong[0]


def _stats(url: str) -> dict:
    """The server's own counters for the task (Triton's statistics extension)."""
    with urllib.request.urlopen(f"{url}/v2/models/synthetic-0/stats", timeout=10) as r:
        m = json.loads(r.read())["model_stats"][0]
    s = m["inference_stats"]
    return {"requests": s["success"]["count"], "input_ns": s["compute_input"]["ns"],
            "output_ns": s["compute_output"]["ns"], "queue_ns": s["queue"]["ns"], "images": m["inference_count"],
            "batches": m["execution_count"], "batch_ns": sum(b["compute_infer"]["ns"] for b in m["batch_stats"])}


def measure(case: str, model_dir: Path, kind: str, size: int, args) -> dict:
    rt = Runtime(model_dir, backend="torch")
    images = _images(100, size if kind == "image" else 256)
    items = [png_bytes(a) for a in images] if kind == "image" else [rt.preprocess("synthetic-0", a) for a in images]
    expected = [p.indices[0] for p in rt.predict("synthetic-0", items if kind == "image" else np.concatenate(items))]
    bodies = _bodies(kind, items)
    sizes = {t: len(bodies[t][0][0]) if t != "grpc" else bodies[t][0].ByteSize() for t in TRANSPORTS}
    gport = free_port()
    per_round = args.requests // args.rounds
    seconds = dict.fromkeys(TRANSPORTS, 0.0)
    latencies: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
    wrong = dict.fromkeys(TRANSPORTS, 0)
    server = {t: dict.fromkeys(("requests", "input_ns", "output_ns", "queue_ns", "images", "batches", "batch_ns"), 0)
              for t in TRANSPORTS}
    with serve_process(str(model_dir), "--backend", "torch", "--grpc-port", str(gport), "--max-queue", "4096",
                       "--max-body-mb", "64") as (url, _proc):
        grpc_url = f"127.0.0.1:{gport}"
        for t in TRANSPORTS:  # warm up: connections, first batches
            _run(t, bodies[t], expected, 2 * args.clients, args.clients, url, grpc_url)
        for _ in range(args.rounds):
            for t in TRANSPORTS:
                before = _stats(url)
                s, lat, w = _run(t, bodies[t], expected, per_round, args.clients, url, grpc_url)
                for k, v in _stats(url).items():
                    server[t][k] += v - before[k]
                seconds[t] += s
                latencies[t] += lat
                wrong[t] += w
    rows = {}
    for t in TRANSPORTS:
        lat = np.array(latencies[t]) * 1e3
        rows[t] = {"requests_per_s": round(len(lat) / seconds[t], 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
                   "p99_ms": round(float(np.percentile(lat, 99)), 2), "request_bytes": sizes[t], "wrong": wrong[t],
                   **_breakdown(server[t])}
    for t in ("binary", "grpc"):
        rows[t]["x_json"] = round(rows[t]["requests_per_s"] / rows["json"]["requests_per_s"], 2)
    return {"case": case, "requests": per_round * args.rounds, "clients": args.clients, "transports": rows}


def _breakdown(c: dict) -> dict:
    """Where the server spent a request's time: decoding its input, waiting for its batch, building the answer
    (ms per request), and the batches it ran (mean size, ms per batch)."""
    per = max(c["requests"], 1)
    return {"input_ms": round(c["input_ns"] / per / 1e6, 2), "queue_ms": round(c["queue_ns"] / per / 1e6, 2),
            "output_ms": round(c["output_ns"] / per / 1e6, 2),
            "mean_batch": round(c["images"] / max(c["batches"], 1), 1),
            "batch_ms": round(c["batch_ns"] / max(c["batches"], 1) / 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="Requests per transport and case.")
    ap.add_argument("--clients", type=int, default=16, help="Concurrent client threads.")
    ap.add_argument("--rounds", type=int, default=2, help="Turns the transports take, each of requests/rounds.")
    ap.add_argument("--out", help="Also write the figures as JSON here.")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("32 px image (embedded, PNG)", "embedded", 32, "image"),
                 ("224 px FP32 (tiny, [1,3,224,224])", "tiny", 224, "input")]
        for case, backbone, size, kind in cases:
            mdir = Path(tmp) / backbone
            make_model_dir(mdir, backbone=backbone, tasks=1, classes=10, input_size=size)
            results.append(measure(case, mdir, kind, size, args))
            print(f"\n{case}: {results[-1]['requests']} requests per transport, {args.clients} clients")
            print(f"{'transport':<10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'x JSON':>8}{'bytes/req':>11}{'wrong':>6}"
                  f"   server, ms per request: {'input':>6}{'queue':>7}{'output':>7}   batches: {'mean':>5}{'ms':>7}")
            for t, r in results[-1]["transports"].items():
                print(f"{t:<10}{r['requests_per_s']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}{r.get('x_json', 1.0):>8}"
                      f"{r['request_bytes']:>11,}{r['wrong']:>6}{'':>27}{r['input_ms']:>6}{r['queue_ms']:>7}"
                      f"{r['output_ms']:>7}{'':>12}{r['mean_batch']:>5}{r['batch_ms']:>7}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    if any(r["wrong"] for res in results for r in res["transports"].values()):
        raise SystemExit("some answers differ from Runtime.predict")


if __name__ == "__main__":
    main()
