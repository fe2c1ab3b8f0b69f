"""Dynamic batching: requests queue per task and run together, bounded in batch size, wait and queue length.

A worker thread per task takes the first waiting request, then gathers more until ``max_batch``
images are waiting or ``max_delay_ms`` has passed since the first arrived, and runs them as one
batch. A task's queue holds at most ``max_queue`` images; beyond that, ``submit`` raises
:class:`OverloadedError` at once instead of letting latency grow without bound.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from tailorrt.errors import OverloadedError


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 512  # images waiting per task


@dataclass
class _Item:
    x: np.ndarray
    future: Future
    queued_at: float


class Observer:
    """What the batcher reports (the server's Prometheus metrics implement it)."""

    def batch(self, task: str, size: int, compute_s: float) -> None: ...

    def queued(self, task: str, wait_s: float) -> None: ...


class _TaskQueue:
    def __init__(self, task: str, run: Callable[[str, np.ndarray], np.ndarray], cfg: BatchConfig,
                 observer: Observer) -> None:
        self.task, self.run, self.cfg, self.observer = task, run, cfg, observer
        self.items: deque[_Item] = deque()
        self.pending = 0
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name=f"batcher-{task}", daemon=True)
        self.thread.start()

    def submit(self, x: np.ndarray) -> Future:
        fut: Future = Future()
        with self.cond:
            if self.closed:
                raise OverloadedError(f"task {self.task!r} is shutting down")
            if self.pending + len(x) > self.cfg.max_queue:
                raise OverloadedError(f"task {self.task!r} has {self.pending} images waiting (limit "
                                      f"{self.cfg.max_queue}); retry later")
            self.items.append(_Item(x, fut, time.perf_counter()))
            self.pending += len(x)
            self.cond.notify()
        return fut

    def _take(self) -> list[_Item] | None:
        with self.cond:
            while not self.items:
                if self.closed:
                    return None
                self.cond.wait()
            deadline = self.items[0].queued_at + self.cfg.max_delay_ms / 1e3
            while sum(len(i.x) for i in self.items) < self.cfg.max_batch and not self.closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self.cond.wait(left)
            batch, size = [], 0
            while self.items and (not batch or size + len(self.items[0].x) <= self.cfg.max_batch):
                item = self.items.popleft()
                batch.append(item)
                size += len(item.x)
            self.pending -= size
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            start = time.perf_counter()
            for item in batch:
                self.observer.queued(self.task, start - item.queued_at)
            try:
                x = np.concatenate([i.x for i in batch]) if len(batch) > 1 else batch[0].x
                logits = self.run(self.task, x)
            except BaseException as e:  # every waiting caller gets the error, the worker goes on
                for item in batch:
                    item.future.set_exception(e)
                continue
            self.observer.batch(self.task, len(x), time.perf_counter() - start)
            offset = 0
            for item in batch:
                item.future.set_result(logits[offset:offset + len(item.x)])
                offset += len(item.x)

    def close(self) -> None:
        """Stop taking requests; the ones already queued are still run."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join()


class Batcher:
    """One queue and worker per task, over a function ``run(task, batch) -> logits``."""

    def __init__(self, run: Callable[[str, np.ndarray], np.ndarray], cfg: BatchConfig = BatchConfig(),
                 observer: Observer | None = None) -> None:
        self.run, self.cfg, self.observer = run, cfg, observer or Observer()
        self._queues: dict[str, _TaskQueue] = {}
        self._lock = threading.Lock()

    def submit(self, task: str, x: np.ndarray) -> Future:
        with self._lock:
            q = self._queues.get(task)
            if q is None:
                q = self._queues[task] = _TaskQueue(task, self.run, self.cfg, self.observer)
        return q.submit(x)

    def pending(self, task: str) -> int:
        q = self._queues.get(task)
        return q.pending if q else 0

    def drop(self, task: str) -> None:
        with self._lock:
            q = self._queues.pop(task, None)
        if q:
            q.close()

    def close(self) -> None:
        """Finish every queued request, then stop the workers."""
        with self._lock:
            queues, self._queues = list(self._queues.values()), {}
        for q in queues:
            q.close()
