"""The serving image (``Dockerfile``), built the offline way (``make image-offline``: a Debian base from Debian's
packages, wheels from this machine) and run with the model dir mounted read-only, its settings and API key from the
environment: the official Triton clients over HTTP and gRPC get the answers of ``Runtime``. Skips where no
container engine runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tailorrt.serving.local import free_port, wait_ready
from tests.test_serving_install import check_served

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/tailorrt:test"
MAX_IMAGE_BYTES = 450e6  # the bound for the image, as the engine reports its size


def _engine() -> str:
    """podman (rootful, runc, as the README's offline way sets it up), else skip with the reason."""
    if shutil.which("podman") is None:
        pytest.skip("no container engine: podman is not installed (apt-get install podman runc)")
    if subprocess.run(["podman", "info"], capture_output=True).returncode != 0:
        pytest.skip("podman is installed but cannot run containers here (podman info fails)")
    if shutil.which("debootstrap") is None and subprocess.run(
            ["podman", "image", "inspect", "localhost/debian-python:bookworm"], capture_output=True).returncode:
        pytest.skip("no base image and no debootstrap to build one (apt-get install debootstrap)")
    return "podman"


@pytest.fixture(scope="module")
def image() -> str:
    engine = _engine()
    subprocess.run(["make", "image-offline", f"ENGINE={engine}", f"IMAGE={IMAGE}"], cwd=ROOT, check=True,
                   capture_output=True, timeout=900)
    return engine


def test_the_image_serves_runtimes_answers_over_both_protocols(image, exported_dir, tmp_path):
    size = json.loads(subprocess.run([image, "image", "inspect", IMAGE], capture_output=True, text=True,
                                     check=True).stdout)[0]["Size"]
    assert size <= MAX_IMAGE_BYTES, f"the image is {size / 1e6:.0f} MB"
    models = tmp_path / "models"
    shutil.copytree(exported_dir, models)
    subprocess.run(["chmod", "-R", "a+rX", str(models)], check=True)
    http_port, grpc_port, name = free_port(), free_port(), f"tailorrt-test-{free_port()}"
    subprocess.run([image, "run", "--detach", "--name", name, "--network", "host", "-v", f"{models}:/models:ro",
                    "-e", f"TAILOR_PORT={http_port}", "-e", f"TAILOR_GRPC_PORT={grpc_port}",
                    "-e", "TAILOR_API_KEY=container-key", "-e", "TAILOR_MAX_IMAGES=16", IMAGE],
                   check=True, capture_output=True)
    try:
        _wait_ready(f"http://127.0.0.1:{http_port}", image, name)
        check_served(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", exported_dir, ["colors", "hues"],
                     headers={"x-api-key": "container-key"})
        user = subprocess.run([image, "exec", name, "id", "-u"], capture_output=True, text=True, check=True).stdout
        assert user.strip() != "0"  # not root
        assert subprocess.run([image, "exec", name, "touch", "/models/x"], capture_output=True).returncode != 0
        assert subprocess.run([image, "healthcheck", "run", name], capture_output=True).returncode == 0
        with pytest.raises(urllib.error.HTTPError, match="401"):  # the key came from the environment
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/colors", timeout=5)
    finally:
        subprocess.run([image, "rm", "--force", name], capture_output=True)



def _wait_ready(url: str, engine: str, name: str) -> None:
    try:
        wait_ready(url)
    except RuntimeError as e:
        logs = subprocess.run([engine, "logs", name], capture_output=True, text=True).stdout
        raise AssertionError(f"the container did not become ready ({e}):\n{logs}") from None
