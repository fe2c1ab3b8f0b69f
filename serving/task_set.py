"""The tasks every worker of ``tailor serve --workers N`` serves (:mod:`tailorrt.serving.workers`): one file of the
run folder, which a repository load or unload on any worker changes and every worker applies."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tailorrt.errors import TailorError

POLL_S = 0.2  # how often a worker looks for a changed task set
APPLY_TIMEOUT_S = 120.0  # how long a load or unload waits for every worker to apply it
log = logging.getLogger("tailorrt.serving")


class TaskSet:
    """The tasks every worker serves: ``tasks.json`` in the run folder (a version and the names), changed under a
    file lock; each worker notes in ``applied/<pid>`` the version it serves."""

    def __init__(self, folder: Path) -> None:
        self.path, self.applied = folder / "tasks.json", folder / "applied"

    def read(self) -> tuple[int, list[str]]:
        data = json.loads(self.path.read_text())
        return data["version"], data["tasks"]

    def write(self, version: int, tasks: list[str]) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": version, "tasks": sorted(tasks)}))
        os.replace(tmp, self.path)

    def change(self, add: str | None = None, remove: str | None = None) -> int:
        """Add or remove a task; the new version."""
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            version, tasks = self.read()
            self.write(version + 1, sorted((set(tasks) | {add}) - {remove, None}))
            return version + 1

    def mark(self, version: int) -> None:
        """This process serves ``version``."""
        self.applied.mkdir(exist_ok=True)
        (self.applied / str(os.getpid())).write_text(str(version))

    def wait_applied(self, version: int, timeout_s: float = APPLY_TIMEOUT_S) -> None:
        """Block until every live worker serves ``version`` (or a later one)."""
        deadline = time.monotonic() + timeout_s
        while True:
            behind = [pid for pid, v in self._marks().items() if v < version and _alive(pid)]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TailorError(f"workers {', '.join(map(str, behind))} did not apply the task change in "
                                  f"{timeout_s:g} s")
            time.sleep(POLL_S / 4)

    def _marks(self) -> dict[int, int]:
        marks = {}
        for f in self.applied.glob("*"):
            with contextlib.suppress(ValueError, OSError):
                marks[int(f.name)] = int(f.read_text())
        return marks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TaskSync:
    """A worker's side of the task set: applies every new version to its service (``load``/``evict``), in a
    thread that looks every :data:`POLL_S`; a load or unload made here waits until every worker applied it."""

    def __init__(self, tasks: TaskSet, loaded: Callable[[], list[str]], load: Callable[[str], None],
                 evict: Callable[[str], None]) -> None:
        self.tasks, self._loaded, self._load, self._evict = tasks, loaded, load, evict
        self._lock, self._stop = threading.Lock(), threading.Event()
        self.version = -1
        self._apply()
        self._thread = threading.Thread(target=self._watch, name="tailorrt-task-sync", daemon=True)
        self._thread.start()

    def changed(self, add: str | None = None, remove: str | None = None) -> None:
        """This worker has just loaded ``add`` or dropped ``remove``: tell the others, and wait for them."""
        version = self.tasks.change(add, remove)
        self._apply()
        self.tasks.wait_applied(version)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._apply()
            except Exception as e:  # a task that fails to load here: logged, the others still served
                log.error("applying the workers' task set failed: %s", e)

    def _apply(self) -> None:
        with self._lock:
            version, wanted = self.tasks.read()
            if version == self.version:
                return
            have = set(self._loaded())
            for task in sorted(have - set(wanted)):
                self._evict(task)
            for task in sorted(set(wanted) - have):
                self._load(task)
            self.version = version
            self.tasks.mark(version)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
