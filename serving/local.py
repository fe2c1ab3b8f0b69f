"""A ``tailor serve`` subprocess on a free loopback port, for the demo, load tests and scripts."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """A PIL image or an ``[H,W,3]`` uint8 array, encoded as PNG."""
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(model_dir: str, *args: str, timeout: float = 120) -> Iterator[str]:
    """Run ``tailor serve`` with ``args`` until the block ends (SIGTERM, graceful); yields its base URL."""
    with serve_process(model_dir, *args, timeout=timeout) as (url, _proc):
        yield url


@contextmanager
def serve_process(model_dir: str, *args: str, timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """As :func:`local_server`, yielding the base URL and the server's process (to watch its memory)."""
    port = free_port()
    if "--grpc-port" not in args and "--no-grpc" not in args:  # never the default port another server may hold
        args = (*args, "--grpc-port", str(free_port()))
    proc = subprocess.Popen([sys.executable, "-m", "tailorrt.cli.app", "serve", "--model-dir", model_dir,
                             "--port", str(port), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tailor serve exited: {proc.stderr.read().strip()}")
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("tailor serve did not become ready") from None
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
