"""A ``tailor serve`` subprocess on a free loopback port, for the demo, load tests and scripts."""

from __future__ import annotations

import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

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
def local_server(model_dir: str, *args: str, timeout: float = 120, env: dict | None = None) -> Iterator[str]:
    """Run ``tailor serve`` with ``args`` until the block ends (SIGTERM, graceful); yields its base URL."""
    with serve_process(model_dir, *args, timeout=timeout, env=env) as (url, _proc):
        yield url


@contextmanager
def serve_process(model_dir: str, *args: str, timeout: float = 120, env: dict | None = None,
                  python: str = sys.executable) -> Iterator[tuple[str, subprocess.Popen]]:
    """As :func:`local_server`, yielding the base URL and the server's process (to watch its memory); ``env``
    replaces the server's environment, ``python`` is the interpreter (of another install) that runs it. The
    server's stderr goes to a temporary file, not a pipe: a pipe nobody reads blocks a server that logs more than
    its buffer holds."""
    port = free_port()
    if "--grpc-port" not in args and "--no-grpc" not in args:  # never the default port another server may hold
        args = (*args, "--grpc-port", str(free_port()))
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([python, "-m", "tailorrt.cli.app", "serve", "--model-dir", model_dir,
                                 "--port", str(port), *args], stdout=subprocess.DEVNULL, stderr=log, text=True,
                                env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, timeout, log=log)
            yield url, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 120, interval: float = 0.2,
               log: IO[str] | None = None) -> None:
    """Poll ``{url}/v2/health/ready`` until it answers 200. RuntimeError if ``proc`` (the server, when this process
    started it) exits first, with the end of its stderr (``log``, the file it writes to, or its pipe), or after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            if log is not None:
                log.seek(0)
            stderr = log.read() if log is not None else proc.stderr.read() if proc.stderr else ""
            stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
            raise RuntimeError(f"tailor serve exited: {stderr.strip()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"tailor serve at {url} did not become ready in {timeout:g} s")
        time.sleep(interval)


@dataclass
class Load:
    """What a load run saw: per-request latencies (s), errors, answers that differ from the expected, wall time."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mismatches: list[tuple] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        lat = np.array(self.latencies or [0.0]) * 1e3
        n = len(self.latencies)
        return {"requests": n, "seconds": round(self.seconds, 2), "requests_per_s": round(n / self.seconds, 1)
                if self.seconds else 0.0, "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                                                         "p99": round(float(np.percentile(lat, 99)), 2),
                                                         "max": round(float(lat.max()), 2)},
                "errors": len(self.errors), "mismatches": len(self.mismatches)}


def send_load(url: str, plan: list[tuple[str, bytes, str, float]], clients: int) -> Load:
    """POST each ``(task, png, expected label, expected score)`` of ``plan`` to ``/v1/tasks/{task}:predict`` from
    ``clients`` threads over keep-alive connections, checking every answer."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    result, lock, cursor = Load(), threading.Lock(), iter(range(len(plan)))

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                break
            task, png, label, score = plan[i]
            t0 = time.perf_counter()
            try:
                conn.request("POST", f"/v1/tasks/{task}:predict?top_k=1", body=png,
                             headers={"Content-Type": "image/png"})
                resp = conn.getresponse()
                body = resp.read()
            except OSError as e:
                with lock:
                    result.errors.append(f"{type(e).__name__}: {e}")
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                continue
            dt = time.perf_counter() - t0
            with lock:
                result.latencies.append(dt)
                if resp.status != 200:
                    result.errors.append(f"{resp.status}: {body[:200]!r}")
                    continue
                got = json.loads(body)
                if got["label"] != label or abs(got["top_k"][0]["score"] - score) > 1e-5:
                    result.mismatches.append((task, label, got["label"], score, got["top_k"][0]["score"]))
        conn.close()

    result.seconds = run_threads(client, clients)
    return result


def run_threads(target: Callable[[], None], count: int) -> float:
    """Run ``target`` in ``count`` threads at once; the seconds until the last one finished."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - start
