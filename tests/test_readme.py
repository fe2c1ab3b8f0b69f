"""The README's examples are tests: every Python block runs (in order, in one namespace, as a reader pastes them),
against model dirs this module builds where the README expects them; every ``tailor ...`` line names options that
its command has."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import click
import pytest

from tests.conftest import QUICK, TAILOR, class_image, run_cli, run_clis

README = Path(__file__).resolve().parent.parent / "README.md"
KEY = "readme-key"
DEMO_TASKS = ("synth-digits", "synth-signs", "synth-glyphs")


def blocks(language: str) -> list[str]:
    """The README's fenced blocks of ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def readme_cwd(tmp_path_factory) -> Path:
    """``runs`` (synth-digits) and ``runs/demo`` (the three built-in tasks, exported to ONNX and int8), trained on the
    tiny backbone with a handful of steps, and ``digit.png``."""
    cwd = tmp_path_factory.mktemp("readme")
    demo = cwd / "runs" / "demo"
    train = ("train", "--model-dir")
    run_clis((*train, str(cwd / "runs"), "--task", "synth-digits", *QUICK),
             (*train, str(demo), "--task", "synth-digits", *QUICK), check=True)
    run_clis(*((*train, str(demo), "--task", t, *QUICK) for t in DEMO_TASKS[1:]), check=True)
    run_cli("export", "--model-dir", str(demo), "--precision", "int8", check=True, timeout=600)
    import numpy as np

    class_image(1, np.random.default_rng(0), 32).save(cwd / "digit.png")
    return cwd


@pytest.fixture(scope="module")
def server(readme_cwd):
    """``tailor serve`` on the README's ports (8000, gRPC 8001) with an API key, for the client examples."""
    if not (_free(8000) and _free(8001)):
        pytest.skip("ports 8000/8001, which the README's client examples use, are taken on this machine")
    proc = subprocess.Popen([str(TAILOR), "serve", "--model-dir", str(readme_cwd / "runs" / "demo"),
                             "--api-key", KEY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:8000/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"tailor serve did not start: {proc.stdout.read()}")
        time.sleep(0.3)
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


def test_every_python_block_of_the_readme_runs(readme_cwd, server, monkeypatch, capsys):
    monkeypatch.chdir(readme_cwd)
    code = blocks("python")
    assert len(code) >= 5
    namespace: dict = {"KEY": KEY}  # the client example's "key if --api-key"
    for i, block in enumerate(code, 1):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - report which block, with its text
            import traceback

            raise AssertionError(f"README python block {i} failed: {type(e).__name__}: {e}\n{block}\n"
                                 f"{traceback.format_exc(limit=-3)}") from e
    printed = capsys.readouterr().out
    assert "synth-digits" in printed and "0." in printed  # the blocks' prints ran: a pack path, accuracies, scores


def _command_options(command: click.Command) -> set[str]:
    ctx = click.Context(command)
    return {o for p in command.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}


def test_every_tailor_line_of_the_readme_uses_options_that_exist():
    import typer

    from tailorrt.cli.app import app

    group = typer.main.get_command(app)
    checked = 0
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if not line.startswith("tailor "):
                continue
            words = shlex.split(line)
            command = group.commands.get(words[1])
            assert command is not None, f"README: no command tailor {words[1]} ({line})"
            known = _command_options(command)
            for word in words[2:]:
                if word.startswith("--"):
                    assert word.split("=")[0] in known, f"README: tailor {words[1]} has no option {word} ({line})"
            checked += 1
    assert checked >= 10
