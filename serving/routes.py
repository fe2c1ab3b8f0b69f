"""Every HTTP path of the server, in one table: the app's handlers are registered on these, the request guard and
the Ray ingress find a request's task with :func:`inference_task` and :func:`task_of`, read from the same table."""

from __future__ import annotations

import re
from dataclasses import dataclass

LIVE = "/v2/health/live"
READY = "/v2/health/ready"
SERVER = "/v2"
MODELS = "/v2/models"
STATS = "/v2/models/stats"
TASKS = "/v1/tasks"
METRICS = "/metrics"
REPOSITORY_INDEX = "/v2/repository/index"
LOAD = "/v2/repository/models/{task}/load"
UNLOAD = "/v2/repository/models/{task}/unload"
INFER = "/v2/models/{task}/infer"
INFER_VERSION = "/v2/models/{task}/versions/{version}/infer"
PREDICT = "/v1/tasks/{task}:predict"
MODEL = "/v2/models/{task}"  # + "", "/ready", "/config", "/stats", each also under /versions/{version}
MODEL_VERSION = "/v2/models/{task}/versions/{version}"
MODEL_SUFFIXES = ("", "/ready", "/config", "/stats")
OPEN = (LIVE, READY)  # answered without the API key


@dataclass(frozen=True)
class Route:
    """A path template, and whether it is a call for inference (counted per task, refused or not)."""

    template: str
    inference: bool = False

    @property
    def pattern(self) -> re.Pattern:
        parts = re.split(r"(\{task\}|\{version\})", self.template)
        body = "".join({"{task}": r"(?P<task>[^/:]+)", "{version}": r"[^/]+"}.get(p, re.escape(p)) for p in parts)
        return re.compile(body + r"/?\Z")


PER_TASK = (Route(INFER, True), Route(INFER_VERSION, True), Route(PREDICT, True), Route(LOAD), Route(UNLOAD),
            *(Route(MODEL + s) for s in MODEL_SUFFIXES), *(Route(MODEL_VERSION + s) for s in MODEL_SUFFIXES))
_COMPILED = [(r, r.pattern) for r in PER_TASK]


def _match(path: str, inference_only: bool) -> str | None:
    if path == STATS or path == STATS + "/":
        return None  # the server-wide statistics, not a task called "stats"
    for route, pattern in _COMPILED:
        if inference_only and not route.inference:
            continue
        m = pattern.match(path)
        if m:
            return m.group("task")
    return None


_INFER = Route(INFER, True).pattern


def infer_task(path: str) -> str | None:
    """The task of ``POST /v2/models/{task}/infer`` (not its versioned form), or None for another path."""
    m = _INFER.match(path)
    return m.group("task") if m else None


def inference_task(path: str) -> str | None:
    """The task an inference request was for, if ``path`` is an inference endpoint."""
    return _match(path, inference_only=True)


def task_of(path: str) -> str | None:
    """The task a request is about (the Ray multiplexed model id), from its path; None for server-wide endpoints."""
    return _match(path, inference_only=False)
