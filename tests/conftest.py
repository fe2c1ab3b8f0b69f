"""Shared fixtures: tiny datasets in real layouts and a runner for the real ``tailor`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tailorrt.records import TaskRecord

TAILOR = Path(sys.executable).parent / "tailor"
COLORS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 220, 40)]


def class_image(label: int, rng: np.random.Generator, size: int = 20) -> Image.Image:
    """A small image whose class is its dominant colour (learnable in a few steps)."""
    arr = np.clip(np.array(COLORS[label], np.float32) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def make_imagefolder(root: Path, classes: int = 3, per_class: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(c, rng).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "colors")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, check: bool = False
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([str(TAILOR), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"tailor {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_clis(*calls: tuple[str, ...], check: bool = False, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Independent CLI calls, two at a time (each on one thread): most of a call is importing, on one core."""
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}

    def one(args: tuple[str, ...]) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(TAILOR), *args], capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"tailor {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, calls))


def one_line_error(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """The single stderr line of a failed CLI call (exit ``code``), asserting there is no traceback."""
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


QUICK = ("--backbone", "tiny", "--random-init", "--teacher-epochs", "1", "--student-epochs", "1",
         "--finetune-epochs", "1", "--batch-size", "8")


@pytest.fixture(scope="session")
def exported_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny tasks ('colors', 3 classes; 'hues', 4 classes) in one model dir, exported to ONNX with --bench, and
    to int8 (``onnx-int8/``). The tiny tasks are barely trained, so the int8 accuracy check may see any drop:
    ``--max-precision-drop 100`` here; the refusal has its own test. Tests copy it before changing it."""
    root = tmp_path_factory.mktemp("exported")
    data = tmp_path_factory.mktemp("exporteddata")
    for name, classes, seed in (("colors", 3, 0), ("hues", 4, 1)):
        folder = make_imagefolder(data / name, classes=classes, per_class=12, seed=seed)
        run_cli("train", "--task", f"imagefolder:{folder}", "--model-dir", str(root), *QUICK, check=True)
    proc = run_cli("export", "--model-dir", str(root), "--bench", "--precision", "int8", "--max-precision-drop", "100",
                   check=True)
    assert "wrote" in proc.stdout and "onnxruntime" in proc.stdout
    assert "onnx-int8" in proc.stdout and "int8 colors: test accuracy" in proc.stderr, proc.stderr
    return root


def task_record(metrics: dict | None = None, **fields) -> TaskRecord:
    """A task's record with ``fields`` over made-up required ones, and ``metrics`` over made-up figures (the
    methods' pictures and words read the rest)."""
    base = {"task": "t", "method": "nettailor", "backbone_sha256": "0" * 64, "classes": ["a"],
            "preprocess": {"resize": [32], "mean": [0, 0, 0], "std": [1, 1, 1]},
            "files": {"task.safetensors": {"sha256": "0" * 64, "bytes": 1}},
            "metrics": {"accuracy": 90.0, "teacher_accuracy": 90.0, "flops": 1, "teacher_flops": 2, "task_params": 1,
                        "shared_params_used": 1, "universal_blocks_kept": 1, "universal_blocks_total": 2}}
    base["metrics"].update(metrics or {})
    return TaskRecord.from_json({**base, **fields})


def reseal(path: Path, drop: tuple[str, ...] = (), **changes) -> dict:
    """Rewrite a metadata record (task.json, backbone.json, export.json) with ``changes`` applied and the keys in
    ``drop`` removed, sealed again as tailorrt would write it: tests that edit a record on purpose are not
    corruptions."""
    from tailorrt.files import read_json
    from tailorrt.records import write_record

    data = {k: v for k, v in {**read_json(path), **changes}.items() if k not in drop}
    write_record(path, data)
    return data


def flip(path: Path, offset: int | None = None, count: int = 64) -> None:
    """Invert ``count`` bytes of a file (in its middle unless ``offset`` is given), keeping its size."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
