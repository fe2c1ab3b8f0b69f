"""A serving install (``pip install tailorrt``, no torch): the training side is hidden from real ``tailor``
processes (``torch``, ``torchvision``, ``onnx``, ... raise ModuleNotFoundError on import, as they would when not
installed), which then serve the ONNX export to the official Triton clients with the answers of the full install's
``Runtime``, and stop training commands with one line naming the install. The container image test is
``tests/test_container.py``; the sizes and start-up times are ``benchmarks/serving_install.py``'s."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from tailorrt import Runtime
from tailorrt.rgb import EXIF_ORIENTATION
from tailorrt.serving.local import free_port, serve_process
from tests.conftest import TAILOR, class_image, one_line_error
from tests.test_layers import SERVING, TRAINING_SIDE


def without_training(root: Path) -> dict:
    """An environment whose Python finds none of the training side, as a serving install: a ``sitecustomize`` first
    on the path puts a finder before the others that refuses those names (to ``import`` and to ``find_spec``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sitecustomize.py").write_text(
        "import sys\n\n\n"
        "class ServingInstall:\n"
        f"    hidden = {set(TRAINING_SIDE)!r}\n\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in self.hidden:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (a serving install)', name=name)\n"
        "        return None\n\n\n"
        "sys.meta_path.insert(0, ServingInstall())\n")
    return {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}


@pytest.fixture(scope="module")
def serving_env(tmp_path_factory) -> dict:
    return without_training(tmp_path_factory.mktemp("serving-install"))


def odd_pngs() -> dict[str, bytes]:
    """Odd-shaped, grey, 16-bit grey, RGBA, palette and EXIF-rotated images, encoded as their files are."""
    rng = np.random.default_rng(11)
    base = class_image(1, rng, size=20)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    images = {"wide.png": (base.resize((53, 17)), {}), "tall.png": (base.resize((9, 61)), {}),
              "big.png": (base.resize((300, 200)), {}), "grey.png": (base.convert("L"), {}),
              "grey16.png": (Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257)), {}),
              "rgba.png": (base.convert("RGBA"), {}), "palette.png": (base.convert("P", colors=32), {}),
              "rotated.jpg": (base.resize((30, 20)).transpose(Image.Transpose.ROTATE_90), {"exif": exif})}
    out = {}
    for name, (image, options) in images.items():
        buf = io.BytesIO()
        image.save(buf, "JPEG" if name.endswith(".jpg") else "PNG", **options)
        out[name] = buf.getvalue()
    return out


def check_served(http_url: str, grpc_url: str, model_dir: Path, tasks: list[str], headers: dict | None = None) -> None:
    """Both official clients get, for every odd image and task, the top-1 of the full install's ``Runtime`` on the
    torch backend and the probabilities of its onnx backend."""
    pngs = odd_pngs()
    names, data = list(pngs), np.array(list(pngs.values()), dtype=np.object_)
    full_torch, full_onnx = Runtime(model_dir, tasks=tasks), Runtime(model_dir, tasks=tasks, backend="onnx")
    for module, url in ((httpclient, http_url), (grpcclient, grpc_url)):
        client = module.InferenceServerClient(url)
        for task in tasks:
            classes = len(full_onnx.task(task).classes)
            inp = module.InferInput("image", [len(data)], "BYTES")
            inp.set_data_from_numpy(data)
            result = client.infer(task, [inp], outputs=[module.InferRequestedOutput("probabilities")],
                                  headers=dict(headers or {}))
            got = result.as_numpy("probabilities")
            want = np.zeros((len(data), classes))
            for row, p in zip(want, full_onnx.predict(task, list(pngs.values()), top_k=classes)):
                row[p.indices] = p.scores
            top1 = [p.indices[0] for p in full_torch.predict(task, list(pngs.values()))]
            assert list(got.argmax(1)) == top1, (module.__name__, task, names)
            assert np.abs(got - want).max() < 1e-5, (module.__name__, task)
        client.close()


def test_a_serving_install_serves_the_full_installs_answers(exported_dir, serving_env, tmp_path):
    gport = free_port()
    with serve_process(str(exported_dir), "--backend", "onnx", "--grpc-port", str(gport), env=serving_env) as (url, _):
        check_served(url.removeprefix("http://"), f"127.0.0.1:{gport}", exported_dir, ["colors", "hues"])
    (tmp_path / "odd.png").write_bytes(odd_pngs()["wide.png"])
    predict = subprocess.run([str(TAILOR), "predict", "--task", "hues", "--model-dir", str(exported_dir), "--backend",
                              "onnx", "--json", str(tmp_path / "odd.png")], capture_output=True, text=True,
                             env=serving_env, check=True)
    want = Runtime(exported_dir, tasks=["hues"]).predict("hues", tmp_path / "odd.png")
    assert json.loads(predict.stdout)[0]["labels"][0] == want.label
    info = subprocess.run([str(TAILOR), "info", "--model-dir", str(exported_dir), "--json"], capture_output=True,
                          text=True, env=serving_env, check=True)
    assert {r["task"] for r in json.loads(info.stdout)["tasks"]} == {"colors", "hues"}


def test_the_training_side_stops_with_one_line_naming_the_install(exported_dir, serving_env):
    calls = [("train", "--task", "synth-digits", "--model-dir", str(exported_dir)), ("export", "--model-dir",
             str(exported_dir)), ("eval", "--task", "colors", "--model-dir", str(exported_dir)),
             ("bench", "--model-dir", str(exported_dir)), ("report", "--model-dir", str(exported_dir)),
             ("tasks",), ("train", "--help"),
             ("predict", "--task", "colors", "--model-dir", str(exported_dir), "x.png")]  # the torch backend
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda args: subprocess.run([str(TAILOR), *args], capture_output=True, text=True,
                                                          env=serving_env, timeout=120), calls))
    for args, proc in zip(calls, procs):
        line = one_line_error(proc, code=2)
        assert "pip install 'tailorrt[train]'" in line, (args, line)
    assert "--backend onnx" in one_line_error(procs[-1], code=2)


def test_the_serving_side_imports_no_training_module():
    """Importing what a request runs (runtime, onnx backend, images, server, CLI) loads no module of the training
    side, here where it is installed: the serving install does not merely survive without it, it never asks."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in SERVING) + "from tailorrt import Runtime\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_SIDE!r} "
            "or m.startswith('tailorrt.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
