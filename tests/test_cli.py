"""The real ``tailor`` command, end to end, on a tiny image folder and the tiny backbone."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tailorrt.files import read_json
from tests.conftest import QUICK, TAILOR, make_imagefolder, one_line_error, run_cli, run_clis


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, imagefolder):
    root = tmp_path_factory.mktemp("runs")
    proc = run_cli("train", "--task", f"imagefolder:{imagefolder}", "--model-dir", str(root), *QUICK, check=True)
    assert "wrote" in proc.stdout
    return root, proc


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run[0]


def test_train_writes_pack_info_and_eval_agree(trained_run):
    trained, proc = trained_run
    meta = read_json(trained / "tasks" / "colors" / "task.json")
    for key in ("format_version", "task", "method", "backbone_sha256", "classes", "preprocess", "architecture"):
        assert key in meta
    for key in ("accuracy", "teacher_accuracy", "task_params", "shared_params_used", "flops", "teacher_flops",
                "universal_blocks_kept", "universal_blocks_total"):
        assert key in meta["metrics"]
    assert meta["backbone_sha256"] == read_json(trained / "backbone" / "backbone.json")["sha256"]
    prune = meta["metrics"]["prune"]  # the architecture search: every candidate fine-tuned is recorded
    fields = {"k", "universal_kept", "proxies_kept", "flops", "val_before", "val_accuracy", "seconds", "vs_teacher",
              "fitted"}
    assert prune["candidates"] and all(set(c) == fields for c in prune["candidates"])
    n_val = meta["data"]["val"]  # each candidate against the teacher on the same validation images
    assert all(c["vs_teacher"]["n"] == n_val == prune["reference"]["images"] for c in prune["candidates"])
    assert prune["student_vs_teacher"]["n"] == n_val and prune["test"]["chosen"]["n"] == meta["data"]["test"]
    # tailor train's line says what the split could tell (a handful of images: that it cannot tell 0.5 points)
    assert prune["words"] in " ".join(proc.stdout.split()) and "cannot tell" in prune["words"]
    chosen = next(c for c in prune["candidates"] if c["k"] == prune["chosen"])
    assert chosen["flops"] == meta["metrics"]["flops"] <= meta["metrics"]["teacher_flops"]
    assert chosen["universal_kept"] == meta["metrics"]["universal_blocks_kept"]
    tuned = [p["name"] for p in meta["training"]["phases"] if p["name"].startswith("finetune-k")]
    assert tuned == [f"finetune-k{c['k']}" for c in prune["candidates"]]
    info = run_cli("info", "--model-dir", str(trained), check=True)
    assert "colors" in info.stdout and "nettailor" in info.stdout
    assert "dropped" in info.stdout  # the choice, in the table (wrapped as the terminal allows)
    rows = json.loads(run_cli("info", "--model-dir", str(trained), "--json", check=True).stdout)["tasks"]
    assert rows[0]["task"] == "colors"
    assert rows[0]["chosen"].startswith(f"dropped {prune['chosen']}/3 ({len(prune['candidates'])} tried")
    ev = run_cli("eval", "--task", "colors", "--model-dir", str(trained), check=True)
    assert f"test accuracy {meta['metrics']['accuracy']:.2f}%" in ev.stdout


def test_help_has_examples():
    for cmd in ("train", "eval", "info", "pretrain", "export"):
        proc = run_cli(cmd, "--help", check=True)
        assert "Example" in proc.stdout


def test_unknown_task_is_one_line(tmp_path):
    line = one_line_error(run_cli("train", "--task", "mnist", "--model-dir", str(tmp_path), *QUICK))
    assert "unknown task 'mnist'" in line


def test_missing_dataset_is_one_line(tmp_path):
    line = one_line_error(run_cli("train", "--task", "svhn", "--no-download", "--data-dir", str(tmp_path / "d"),
                                   "--model-dir", str(tmp_path / "m"), *QUICK))
    assert "train_32x32.mat" in line


def test_missing_image_folder_fails_before_any_weights(tmp_path):
    line = one_line_error(run_cli("train", "--task", f"imagefolder:{tmp_path / 'nope'}", "--backbone", "resnet18",
                                   "--model-dir", str(tmp_path / "m")))
    assert "does not exist" in line
    assert not (tmp_path / "m" / "backbone").exists()


def test_wrong_backbone_for_pack_is_one_line(trained, tmp_path):
    other = tmp_path / "other"
    proc = run_cli("train", "--task", f"imagefolder:{make_imagefolder(tmp_path / 'blue', classes=2)}",
                   "--model-dir", str(other), *QUICK, "--seed", "7", check=True)
    assert proc.returncode == 0
    shutil.copytree(trained / "tasks" / "colors", other / "tasks" / "colors")
    line = one_line_error(run_cli("eval", "--task", "colors", "--model-dir", str(other)))
    assert "trained on backbone" in line and "retrain" in line


def test_corrupt_pack_and_weights_are_one_line(trained, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    f = copy / "tasks" / "colors" / "task.safetensors"
    f.write_bytes(f.read_bytes()[:64])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    pack, weights = run_clis(("eval", "--task", "colors", "--model-dir", str(copy)),
                             ("train", "--task", "synth-digits", "--backbone", "tiny", "--backbone-weights", str(bad),
                              "--model-dir", str(tmp_path / "m")))
    assert "corrupt" in one_line_error(pack)
    assert "bad.safetensors" in one_line_error(weights)


def test_kill_mid_training_then_resume(tmp_path):
    from tailorrt.training.io import load_metadata as _metadata

    data = make_imagefolder(tmp_path / "kill", classes=3, per_class=24)
    model_dir = tmp_path / "runs"
    args = ["train", "--task", f"imagefolder:{data}", "--model-dir", str(model_dir), "--backbone", "tiny",
            "--random-init", "--teacher-epochs", "4", "--student-epochs", "2", "--finetune-epochs", "1",
            "--batch-size", "4"]
    proc = subprocess.Popen([str(TAILOR), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = model_dir / ".work" / "kill" / "teacher.safetensors"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                meta = _metadata(ckpt)
            except Exception:
                meta = {}
            if int(meta.get("epoch", 0)) >= 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = meta
                break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed_at is not None, "training ended before it could be killed"
    assert not (model_dir / "tasks" / "kill").exists()
    saved_history = json.loads(_metadata(ckpt)["history"])
    assert len(saved_history) >= 2
    run_cli(*args, "--resume", check=True)
    meta = read_json(model_dir / "tasks" / "kill" / "task.json")
    teacher = meta["training"]["phases"][0]
    assert teacher["name"] == "teacher" and len(teacher["history"]) == 4
    assert teacher["history"][: len(saved_history)] == saved_history  # finished epochs kept, not retrained


def test_a_task_that_owns_its_universal_norms_trains_exports_and_serves(tmp_path, imagefolder):
    """Real data's default, --universal-norms, end to end: the pack carries the kept blocks' BN scale and shift
    (--no-universal-norms: none), the backbone file is untouched, eval reproduces the recorded accuracy, and the
    ONNX and torch runtimes agree."""
    import numpy as np

    from tailorrt import Runtime
    from tailorrt.training.io import load_tensors

    root = tmp_path / "runs"
    weights = root / "backbone" / "backbone.safetensors"
    before = b""
    for flag in ("--no-universal-norms", None):
        run_cli("train", "--task", f"imagefolder:{imagefolder}", "--model-dir", str(root), *QUICK,
                *([flag] if flag else []), check=True)
        meta = read_json(root / "tasks" / "colors" / "task.json")
        assert meta["config"]["universal_norms"] is (flag is None)
        tensors = load_tensors(root / "tasks" / "colors" / "task.safetensors")
        assert any(".universal." in k and k.endswith(".weight") for k in tensors) is (flag is None)
        before = before or weights.read_bytes()  # as the first run wrote it: the second must leave it so
    ev = run_cli("eval", "--task", "colors", "--model-dir", str(root), check=True)
    assert f"test accuracy {meta['metrics']['accuracy']:.2f}%" in ev.stdout
    run_cli("export", "--model-dir", str(root), check=True)
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    scores = [Runtime(root, backend=b).predict("colors", image, top_k=3).scores for b in ("torch", "onnx")]
    assert np.allclose(scores[0], scores[1], atol=1e-4)
    assert weights.read_bytes() == before


# (command, option): why its default on the command line is not its dataclass field's default
CLI_OWN_DEFAULTS = {("serve", "grpc_port"): "the config's None means no gRPC endpoint; --no-grpc says that here"}


def test_every_command_line_default_is_its_request_dataclass_default():
    """Where a command's option is a field of the request or config dataclass the command fills, the two defaults
    agree: a default is declared once in effect, and a change to one side fails here. An option that defaults to
    None stands for the field's default, resolved by the command; where its help names that default ("default 10"),
    the help must name the field's."""
    import dataclasses
    import re

    import typer

    from tailorrt.cli.app import app
    from tailorrt.export.common import ExportRequest
    from tailorrt.limits import Limits
    from tailorrt.serving.config import BatchConfig, RayConfig, ServerConfig
    from tailorrt.tools.bench import BenchRequest
    from tailorrt.tools.compare import CompareRequest
    from tailorrt.tools.report import ReportRequest
    from tailorrt.training.pretrain import PretrainConfig
    from tailorrt.training.train import TrainRequest

    requests = {"train": [TrainRequest], "export": [ExportRequest], "bench": [BenchRequest],
                "compare": [CompareRequest], "report": [ReportRequest], "pretrain": [PretrainConfig],
                "serve": [ServerConfig, BatchConfig, RayConfig, Limits]}
    commands = typer.main.get_command(app).commands
    checked, wrong = 0, []
    for command, classes in requests.items():
        for request in classes:
            fields = {f.name: f for f in dataclasses.fields(request)}
            for param in commands[command].params:
                field = fields.get(param.name)
                if field is None or field.default is dataclasses.MISSING or (command, param.name) in CLI_OWN_DEFAULTS:
                    continue
                want, have = field.default, param.default
                if have is None:
                    named = re.search(r"\(default:? ([0-9][0-9,.]*)\)", param.help or "")  # a number the help names
                    have = want if named is None else float(named.group(1).replace(",", ""))
                elif isinstance(have, Path) and isinstance(want, (str, Path)):  # typer's Path, a request's str
                    have, want = str(have), str(want)
                elif isinstance(want, tuple) and isinstance(have, str):
                    have = tuple(type(want[0])(x) for x in have.split(","))
                checked += 1
                if have != want:
                    wrong.append(f"tailor {command} --{param.name.replace('_', '-')}: {have!r} here, "
                                 f"{request.__name__}.{field.name} = {want!r}")
    assert not wrong, wrong
    assert checked > 40  # the options above are found, not skipped
