"""``tailor serve --workers N``: worker processes that map one copy of the weights, count together and apply every
repository change; and the weight store's mapped files they rely on."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tailorrt import Runtime
from tailorrt.onnx_weight_store import WeightStore
from tailorrt.serving.local import free_port, png_bytes, serve_process
from tests.conftest import class_image, one_line_error, run_cli


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, data: bytes = b"", content_type: str = "application/octet-stream") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _weight_maps(pid: int) -> set[tuple[str, str]]:
    """(device, inode) of the files under a workers' ``weights/`` folder that process ``pid`` maps."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and "tailorrt-workers-" in parts[5] and "/weights/" in parts[5]:
            found.add((parts[3], parts[4]))
    return found


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_share_the_weights_count_together_and_apply_repository_changes(exported_dir):
    rt = Runtime(exported_dir, backend="onnx")
    pngs = [png_bytes(class_image(i % 3, np.random.default_rng(i))) for i in range(6)]
    expected = [rt.predict("colors", p).labels[0] for p in pngs]
    grpc_port = free_port()
    with serve_process(str(exported_dir), "--backend", "onnx", "--workers", "2", "--grpc-port", str(grpc_port)) \
            as (url, proc):
        deadline = time.monotonic() + 60  # the server is ready when one worker is; the other may still be loading
        while len(workers := [p for p in _children(proc.pid) if _weight_maps(p)]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2  # two workers, mapping the same files (the same inodes: one copy in memory)
        assert _weight_maps(workers[0]) == _weight_maps(workers[1])
        folder = next(Path(line.split(None, 5)[5]).parent.parent for line in
                      Path(f"/proc/{workers[0]}/maps").read_text().splitlines() if "/weights/" in line)

        def counted() -> set[int]:  # the workers that have counted a request
            return {int(f.stem.rsplit("_", 1)[1]) for f in (folder / "metrics").glob("counter_*.db")}

        sent = 0  # every request on a new connection: the kernel spreads them over the workers
        while sent < 20 * len(pngs) and (sent < 4 * len(pngs) or counted() != set(workers)):
            for png, label in zip(pngs, expected):
                status, body = _post(f"{url}/v1/tasks/colors:predict", png, "image/png")
                assert status == 200 and json.loads(body)["label"] == label
            sent += len(pngs)
        assert counted() == set(workers)  # both workers answered some of them
        for _ in range(4):  # whichever worker answers, the figures are every worker's
            metrics = _get(f"{url}/metrics")[1].decode()
            assert re.search(r'tailorrt_requests_total\{endpoint="v1",task="colors"\} (\S+)', metrics).group(1) \
                == f"{sent}.0"
            stats = json.loads(_get(f"{url}/v2/models/colors/stats")[1])["model_stats"][0]
            assert stats["inference_count"] == sent and stats["inference_stats"]["success"]["count"] == sent
            assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in stats["batch_stats"]) == sent

        assert _post(f"{url}/v2/repository/models/hues/unload")[0] == 200
        assert {_get(f"{url}/v2/models/hues/ready")[0] for _ in range(8)} == {404}  # no worker serves it
        assert _post(f"{url}/v2/repository/models/hues/load")[0] == 200
        assert {_get(f"{url}/v2/models/hues/ready")[0] for _ in range(8)} == {200}  # every worker does again
        for _ in range(4):  # each worker serves gRPC on the same port (SO_REUSEPORT); every channel gets an answer
            with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                assert client.is_model_ready("hues") and client.is_server_live()
        index = json.loads(_post(f"{url}/v2/repository/index")[1])
        assert {m["name"]: m["state"] for m in index} == {"colors": "READY", "hues": "READY"}
        assert folder.exists()
    assert not folder.exists()  # the run folder goes with the server


def test_workers_need_the_onnx_backend_and_refuse_ray(exported_dir):
    proc = run_cli("serve", "--model-dir", str(exported_dir), "--backend", "torch", "--workers", "2", "--no-grpc")
    assert "--workers 2 needs --backend onnx" in one_line_error(proc)
    proc = run_cli("serve", "--model-dir", str(exported_dir), "--ray", "--workers", "2")
    assert "--workers does not apply with --ray" in one_line_error(proc)


def test_mapped_weights_are_one_file_per_content_and_a_bad_file_is_rewritten(tmp_path):
    data = np.arange(64, dtype=np.float32)
    a, b = WeightStore(tmp_path), WeightStore(tmp_path)
    va = a.put("t1", memoryview(data.tobytes()), np.float32, (8, 8))
    written = {f.name: os.stat(f).st_ino for f in tmp_path.iterdir()}
    vb = b.put("t2", memoryview(data.tobytes()), np.float32, (8, 8))
    files = [f for f in tmp_path.iterdir() if not f.name.startswith(".")]
    assert len(files) == 1 and files[0].read_bytes() == data.tobytes()
    assert np.array_equal(va.numpy(), vb.numpy()) and np.array_equal(va.numpy().ravel(), data)
    assert {f.name: os.stat(f).st_ino for f in tmp_path.iterdir()} == written  # the second store mapped that file
    files[0].write_bytes(b"\0" * data.nbytes)  # damaged on disk: the next store does not trust it
    c = WeightStore(tmp_path).put("t3", memoryview(data.tobytes()), np.float32, (8, 8))
    assert np.array_equal(c.numpy().ravel(), data)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temporary file left behind


def test_workers_on_a_port_in_use_are_one_line_before_anything_loads(exported_dir):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        proc = run_cli("serve", "--model-dir", str(exported_dir), "--workers", "2", "--no-grpc", "--port",
                       str(held.getsockname()[1]))
    assert "Address already in use" in one_line_error(proc, 3)  # and no "serving ..." line before it


def test_workers_must_be_positive(exported_dir):
    proc = run_cli("serve", "--model-dir", str(exported_dir), "--workers", "0", "--no-grpc")
    assert "the workers must be positive" in one_line_error(proc)
