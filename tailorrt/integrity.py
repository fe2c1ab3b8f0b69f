"""Integrity: every file of a model directory is checked against the sha256 recorded for it before it is used.

- Weights, graphs and engines (``backbone.safetensors``, ``task.safetensors``, ``onnx/*.onnx``,
  ``onnx/universal.data``, ``trt/*.engine``) have their sha256 in a metadata record (``backbone.json``,
  ``task.json``, ``export.json``). :class:`FileVerifier` hashes a file once and remembers the answer while the
  file's identity (device, inode, size, modification time) stays the same, so a runtime that adds tasks
  while serving does not hash the shared weights again, and a file replaced or rewritten since is hashed anew.
- The records carry the sha256 of their own content (``content_sha256``, over the canonical JSON of every
  other key): :func:`seal` adds it when a record is written, :func:`unseal` checks and removes it when one is
  read. Records written before seals existed have none and are read as they are.

The check costs one pass over each file at load (about 1.2 GB/s of sha256 on a 2-core machine; see
benchmarks/integrity.py), never per request.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from tailorrt.errors import IntegrityError, PackError
from tailorrt.files import sha256_file

SEAL_KEY = "content_sha256"


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def content_sha256(record: dict) -> str:
    """The sha256 of a record's canonical JSON, its own seal left out."""
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != SEAL_KEY})).hexdigest()


def seal(record: dict) -> dict:
    """``record`` with the sha256 of its content added (or replaced)."""
    return {**{k: v for k, v in record.items() if k != SEAL_KEY}, SEAL_KEY: content_sha256(record)}


def unseal(record: Any, path: Path, remedy: str) -> dict:
    """``record`` without its seal, refusing one whose content no longer matches it."""
    if not isinstance(record, dict):
        raise PackError(f"{path} does not hold a JSON object; {remedy}")
    want = record.get(SEAL_KEY)
    if want is not None and want != content_sha256(record):
        raise IntegrityError(f"{path} was changed or corrupted after it was written (its content does not match "
                             f"its {SEAL_KEY}); {remedy}")
    return {k: v for k, v in record.items() if k != SEAL_KEY}


class FileVerifier:
    """sha256 checks of files, each file hashed once per identity (device, inode, size, mtime). Thread-safe."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int, int, int], str]] = {}
        self._lock = threading.Lock()

    def sha256(self, path: Path) -> str:
        """The file's sha256, from the cache while the file is the one hashed before."""
        path = Path(path).resolve()
        try:
            st = path.stat()
        except OSError as e:
            raise IntegrityError(f"{path} is missing or unreadable ({e.strerror})") from e
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._seen.get(path)
        if cached is not None and cached[0] == identity:
            return cached[1]
        digest = sha256_file(path)
        with self._lock:
            self._seen[path] = (identity, digest)
        return digest

    def verify(self, path: Path, sha256: str, *, recorded_in: Path | str, remedy: str) -> Path:
        """``path`` if its sha256 is ``sha256`` (as recorded in ``recorded_in``), else IntegrityError."""
        actual = self.sha256(path)
        if actual != sha256:
            raise IntegrityError(f"{path} does not match the sha256 recorded in {recorded_in} ({actual[:12]} instead "
                                 f"of {str(sha256)[:12]}): the file was changed or corrupted; {remedy}")
        return Path(path)
