"""Runtime: inputs of every kind, backends that agree, tasks added and removed without reloading weights."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tailorrt import Prediction, Runtime
from tailorrt.errors import BadInputError, InputTooLargeError, OverloadedError, PackError, UnknownTaskError
from tailorrt.limits import Limits
from tailorrt.serving.batcher import BatchConfig, Batcher
from tailorrt.serving.local import png_bytes
from tailorrt.training.datasets import load_task
from tailorrt.training.packs import TrainingDir
from tests.conftest import class_image, reseal


@pytest.fixture(scope="module")
def runtimes(exported_dir):
    return {b: Runtime(exported_dir, backend=b) for b in ("torch", "onnx")}


def test_backends_agree_on_every_task_test_split(runtimes):
    rt = runtimes["torch"]
    for task in rt.tasks:
        data = load_task(rt.task(task).record.data_spec, data_dir=Path("data"), preprocess=rt.task(task).preprocess)
        x = np.stack([data.test[i][0].numpy() for i in range(len(data.test))])
        a, b = runtimes["torch"].logits(task, x), runtimes["onnx"].logits(task, x)
        assert np.abs(a - b).max() <= 1e-4 and (a.argmax(1) == b.argmax(1)).all()


def test_predict_accepts_every_kind_of_image(runtimes, tmp_path):
    rt = runtimes["onnx"]
    img = class_image(1, np.random.default_rng(0), size=23)
    path = tmp_path / "a.png"
    img.save(path)
    arr = np.array(img)
    single = rt.predict("colors", img, top_k=2)
    assert isinstance(single, Prediction) and len(single.labels) == 2 and single.scores[0] >= single.scores[1]
    same = [rt.predict("colors", x, top_k=2) for x in (arr, torch.from_numpy(arr), str(path), path, png_bytes(img))]
    assert all(p.indices == single.indices and np.allclose(p.scores, single.scores, atol=1e-6) for p in same)
    batch = rt.predict("colors", [img, png_bytes(img), arr], top_k=1)
    assert isinstance(batch, list) and [p.indices for p in batch] == [single.indices[:1]] * 3
    pre = rt.preprocess("colors", img)
    assert rt.predict("colors", pre[0]).indices == single.indices[:1]  # a preprocessed float tensor
    assert len(rt.predict("colors", np.stack([arr, arr]))) == 2  # NHWC uint8 batch


def test_bad_inputs_raise_typed_errors(runtimes):
    rt = runtimes["torch"]
    png = png_bytes(class_image(0, np.random.default_rng(1)))
    for bad in (b"", b"not an image", png[: len(png) // 2], np.zeros((3, 5, 5), np.int32),
                np.zeros((2, 3, 7, 7), np.float32), [], "/no/such/file.png", 3.5):
        with pytest.raises(BadInputError):
            rt.predict("colors", bad)
    with pytest.raises(UnknownTaskError):
        rt.predict("nope", png)
    small = Runtime(rt.model_dir.root, tasks=["colors"], limits=Limits(max_pixels=100, max_images=2))
    with pytest.raises(InputTooLargeError):
        small.predict("colors", png)  # 20x20 = 400 pixels
    with pytest.raises(InputTooLargeError):
        small.predict("colors", [np.zeros((5, 5, 3), np.uint8)] * 3)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_add_and_remove_tasks_without_reloading_the_backbone(exported_dir, backend, monkeypatch):
    rt = Runtime(exported_dir, tasks=["colors"], backend=backend)
    img = class_image(2, np.random.default_rng(3))
    before = rt.predict("colors", img)
    backbone = getattr(rt.backend, "backbone", None)
    first = rt.backend.sessions["colors"] if backend == "onnx" else None

    def no_reload(*_a, **_k):
        raise AssertionError("the backbone was loaded again")

    monkeypatch.setattr(TrainingDir, "load_backbone", no_reload)
    rt.add_task("hues")
    assert rt.tasks == ["colors", "hues"]
    assert rt.predict("colors", img).scores == pytest.approx(before.scores, abs=1e-6)
    assert len(rt.predict("hues", img).indices) == 1
    if backend == "onnx":  # a session per task; the re-laid universal weights are stored once, used by both
        assert rt.backend.sessions["colors"] is first  # not rebuilt
        store = rt.backend.store
        assert store.shared_bytes() > 0.5 * store.nbytes
        assert {frozenset(e.users) for e in store._entries.values()} == {frozenset({"colors", "hues"}),
                                                                         frozenset({"colors"}), frozenset({"hues"})}
    else:
        assert rt.backend.backbone is backbone
        student = rt.backend.models["hues"]
        assert student.layers[0].universal.conv1.weight is rt.backend.backbone.blocks[0].conv1.weight
    rt.remove_task("colors")
    assert rt.tasks == ["hues"]
    if backend == "onnx":  # what only colors used is gone; what hues uses stays
        assert {frozenset(e.users) for e in rt.backend.store._entries.values()} == {frozenset({"hues"})}
        assert rt.predict("hues", img).indices == rt.predict("hues", img).indices
    with pytest.raises(UnknownTaskError):
        rt.predict("colors", img)


def test_onnx_fused_weights_agree_but_are_private(exported_dir):
    shared = Runtime(exported_dir, backend="onnx")
    fused = Runtime(exported_dir, backend="onnx", share_weights=False)
    rng = np.random.default_rng(5)
    for task in shared.tasks:
        x = shared.preprocess(task, [class_image(i % 3, rng) for i in range(6)])
        np.testing.assert_allclose(fused.logits(task, x), shared.logits(task, x), atol=1e-4)
    # fused batch norms make each task's conv weights its own: what the store can share shrinks to (almost) nothing
    assert fused.backend.store.shared_bytes() < 0.1 * shared.backend.store.shared_bytes()
    assert fused.backend.store.nbytes > shared.backend.store.nbytes


def test_onnx_backend_needs_a_current_export(exported_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(exported_dir, copy)
    path = copy / "tasks" / "hues" / "task.json"
    files = json.loads(path.read_text())["files"]
    reseal(path, files={name: {**entry, "sha256": "0" * 64} for name, entry in files.items()})  # retrained since
    with pytest.raises(PackError, match="older than its task pack"):
        Runtime(copy, tasks=["hues"], backend="onnx")
    shutil.rmtree(copy / "onnx")
    with pytest.raises(PackError, match="tailor export"):
        Runtime(copy, backend="onnx")


# ---------------------------------------------------------------------------------------------- batcher


def test_batcher_groups_requests_and_bounds_its_queue():
    gate, sizes = threading.Event(), []

    def run(task, x):
        gate.wait(10)
        sizes.append(len(x))
        return x.sum(axis=(1, 2, 3))[:, None]

    b = Batcher(run, BatchConfig(max_batch=4, max_delay_ms=50, max_queue=9))
    first = b.submit("t", np.ones((1, 1, 1, 1)))
    time.sleep(0.1)  # the worker is now blocked on the first batch
    futs = [b.submit("t", np.full((1, 1, 1, 1), i, np.float32)) for i in range(6)]
    with pytest.raises(OverloadedError):
        b.submit("t", np.ones((4, 1, 1, 1)))  # 6 + 4 > 9 waiting
    gate.set()
    assert first.result(5)[0, 0] == 1
    assert [f.result(5)[0, 0] for f in futs] == list(range(6))
    assert sizes == [1, 4, 2]
    b.close()


def test_batcher_serves_every_task_from_one_worker_oldest_first():
    gate, runs, active, overlap = threading.Event(), [], [0], [0]
    lock = threading.Lock()

    def run(task, x):
        with lock:
            active[0] += 1
            overlap[0] = max(overlap[0], active[0])
        gate.wait(10)
        runs.append((task, len(x)))
        with lock:
            active[0] -= 1
        return x.reshape(len(x), -1)[:, :1]

    b = Batcher(run, BatchConfig(max_batch=4, max_delay_ms=30))
    first = b.submit("a", np.ones((1, 1)))
    time.sleep(0.1)  # the one worker is now blocked on task a
    later = [b.submit("b", np.ones((1, 1))) for _ in range(3)] + [b.submit("a", np.ones((1, 1))) for _ in range(2)]
    time.sleep(0.1)
    gate.set()
    for f in [first, *later]:
        f.result(5)
    # while a ran, b's requests (queued first) and a's gathered: each task's waiting requests run as one batch
    assert runs == [("a", 1), ("b", 3), ("a", 2)]
    assert overlap[0] == 1
    # dropping a task answers what is queued for it first; closing refuses new requests
    gate.clear()
    blocked = b.submit("a", np.ones((1, 1)))
    queued = b.submit("a", np.ones((2, 1)))
    dropper = threading.Thread(target=b.drop, args=("a",))
    dropper.start()
    time.sleep(0.1)
    assert dropper.is_alive() and not queued.done()
    with pytest.raises(UnknownTaskError, match="being unloaded"):
        b.submit("a", np.ones((1, 1)))
    gate.set()
    dropper.join(5)
    assert blocked.done() and queued.result(0).shape == (2, 1)
    with pytest.raises(InputTooLargeError, match="holds at most 512"):  # could never be queued: not a retry
        b.submit("b", np.ones((513, 1)))
    b.close()
    with pytest.raises(OverloadedError, match="shutting down"):
        b.submit("b", np.ones((1, 1)))


def test_batcher_hands_errors_to_every_waiting_caller():
    def run(task, x):
        raise RuntimeError("boom")

    b = Batcher(run, BatchConfig(max_batch=8, max_delay_ms=20))
    futs = [b.submit("t", np.ones((1, 1))) for _ in range(3)]
    for f in futs:
        with pytest.raises(RuntimeError, match="boom"):
            f.result(5)
    b.close()
