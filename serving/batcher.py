"""Dynamic batching: requests queue per task and run together, bounded in batch size, wait and queue length.

Every task has its own queue, and a small pool of workers (one by default) serves all of them: a worker takes
the queue whose first request has waited longest among those that are ready (``max_batch`` images waiting, or
``max_delay_ms`` passed since the first arrived) and runs up to ``max_batch`` of its images as one batch.
One worker for all tasks is the right default on a CPU, where one batch already uses every core: while it
runs, the other tasks' queues fill, so mixing tasks keeps batches large instead of splitting the cores (and
the requests) between concurrent small batches. A task's queue holds at most ``max_queue`` images; beyond
that, ``submit`` raises :class:`OverloadedError` at once instead of letting latency grow without bound, and
a request larger than the whole queue raises :class:`InputTooLargeError` (it could never be queued).

A request may also be queued before its images are decoded (:class:`Deferred`): its decoding starts at once in the
batcher's decode threads, overlapping the batch that runs meanwhile, and the worker that takes it into a batch
waits for it there. The caller's event loop then makes one hand-off per request (the answer), not one to a
thread to decode and one back; a request whose images fail to decode gets its error alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tailorrt.errors import InputTooLargeError, OverloadedError, UnknownTaskError
from tailorrt.serving.config import BatchConfig


@dataclass(frozen=True)
class Deferred:
    """A request's batch still to be made (decoded): ``count`` images as the request declares them (what the
    queue counts), ``make`` run in a decode thread."""

    count: int
    make: Callable[[], np.ndarray]


@dataclass
class _Item:
    x: np.ndarray | Future  # the batch, or its decoding
    count: int
    future: Future
    queued_at: float


@dataclass
class _Queue:
    items: deque[_Item] = field(default_factory=deque)
    pending: int = 0  # images waiting
    running: int = 0  # batches of this task being run now
    closed: bool = False


class Observer:
    """What the batcher reports (the server's Prometheus metrics implement it)."""

    def batch(self, task: str, size: int, requests: int, compute_s: float) -> None:
        """A batch of ``size`` images from ``requests`` requests ran in ``compute_s``."""

    def queued(self, task: str, wait_s: float) -> None:
        """A request waited ``wait_s`` in its queue."""


class Batcher:
    """Per-task queues over a function ``run(task, batch) -> logits``, served by ``cfg.workers`` threads."""

    def __init__(self, run: Callable[[str, np.ndarray], np.ndarray], cfg: BatchConfig = BatchConfig(),
                 observer: Observer | None = None, decode_threads: int = 2) -> None:
        if cfg.workers < 1:
            raise ValueError("a batcher needs at least one worker")
        self.run, self.cfg, self.observer = run, cfg, observer or Observer()
        self._decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        self._queues: dict[str, _Queue] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._workers = [threading.Thread(target=self._loop, name=f"batcher-{i}", daemon=True)
                         for i in range(cfg.workers)]
        for w in self._workers:
            w.start()

    def submit(self, task: str, x: np.ndarray | Deferred) -> Future:
        """Queue ``x`` (a batch of one or more images, or one to be decoded) for ``task``; the future gets its
        logits, or the error of its decoding."""
        count = x.count if isinstance(x, Deferred) else len(x)
        if count > self.cfg.max_queue:  # could never fit: retrying would not help
            raise InputTooLargeError(f"{count} images in one request; a task's queue holds at most "
                                     f"{self.cfg.max_queue}")
        fut: Future = Future()
        with self._cond:
            q = self._queues.get(task)
            if self._closed:
                raise OverloadedError("the server is shutting down")
            if q is not None and q.closed:
                raise UnknownTaskError(f"task {task!r} is being unloaded")
            if q is None:
                q = self._queues[task] = _Queue()
            if q.pending + count > self.cfg.max_queue:
                raise OverloadedError(f"task {task!r} has {q.pending} images waiting (limit "
                                      f"{self.cfg.max_queue}); retry later")
            batch = self._decoder.submit(x.make) if isinstance(x, Deferred) else x
            q.items.append(_Item(batch, count, fut, time.perf_counter()))
            q.pending += count
            self._cond.notify_all()
        return fut

    def pending(self, task: str) -> int:
        """Images waiting for ``task``."""
        q = self._queues.get(task)
        return q.pending if q else 0

    def _ready(self, now: float) -> tuple[str | None, float | None]:
        """The task to run next (the ready queue whose first request is oldest), else how long until one is
        ready (None: nothing is waiting). Called with the lock held."""
        best, best_at, wait = None, 0.0, None
        for task, q in self._queues.items():
            if not q.items:
                continue
            first = q.items[0].queued_at
            due = first + self.cfg.max_delay_ms / 1e3
            if q.pending >= self.cfg.max_batch or due <= now or q.closed or self._closed:
                if best is None or first < best_at:
                    best, best_at = task, first
            else:
                wait = due - now if wait is None else min(wait, due - now)
        return best, wait

    def _take(self) -> tuple[str, _Queue, list[_Item]] | None:
        with self._cond:
            while True:
                task, wait = self._ready(time.perf_counter())
                if task is not None:
                    q = self._queues[task]
                    batch, size = [], 0
                    while q.items and (not batch or size + q.items[0].count <= self.cfg.max_batch):
                        item = q.items.popleft()
                        batch.append(item)
                        size += item.count
                    q.pending -= size
                    q.running += 1
                    return task, q, batch
                if wait is None and self._closed:
                    return None
                self._cond.wait(wait)

    def _run(self, task: str, batch: list[_Item]) -> None:
        taken = time.perf_counter()
        for item in batch:
            self.observer.queued(task, taken - item.queued_at)
        batch = [item for item in batch if self._decoded(item)]
        if not batch:
            return
        start = time.perf_counter()
        try:
            x = np.concatenate([i.x for i in batch]) if len(batch) > 1 else batch[0].x
            logits = self.run(task, x)
        except BaseException as e:  # every waiting caller gets the error, the worker goes on
            for item in batch:
                item.future.set_exception(e)
            return
        self.observer.batch(task, len(x), len(batch), time.perf_counter() - start)
        offset = 0
        for item in batch:
            item.future.set_result(logits[offset:offset + len(item.x)])
            offset += len(item.x)

    @staticmethod
    def _decoded(item: _Item) -> bool:
        """Wait for the item's decoding; False (its future has the error) if it failed."""
        if isinstance(item.x, Future):
            try:
                item.x = item.x.result()
            except BaseException as e:
                item.future.set_exception(e)
                return False
        return True

    def _loop(self) -> None:
        while (got := self._take()) is not None:
            task, q, batch = got
            try:
                self._run(task, batch)
            finally:
                with self._cond:
                    q.running -= 1
                    self._cond.notify_all()

    def drop(self, task: str) -> None:
        """Stop taking requests for ``task``; the ones already queued are still run before this returns."""
        with self._cond:
            q = self._queues.get(task)
            if q is None:
                return
            q.closed = True
            self._cond.notify_all()
            while q.items or q.running:
                self._cond.wait()
            if self._queues.get(task) is q:
                del self._queues[task]

    def close(self) -> None:
        """Finish every queued request, then stop the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for w in self._workers:
            w.join()
        self._decoder.shutdown()
