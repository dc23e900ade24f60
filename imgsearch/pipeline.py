"""Stages on threads, each behind a bounded queue: a batch moves on as soon as its stage is
done with it, so the slowest stage alone sets the pace of an indexing run (decoding, the
model, the caption search and the writer no longer take turns on one thread).

A stage that fails keeps its error and drops what it is given from then on; whoever puts
the next item, or closes it, gets that very exception (a full disk is still one line at the
CLI). Cancelling lets the item in hand finish (a batch being written is committed or rolled
back as a whole) and drops the rest.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class Stage(Generic[T]):
    """One thread applying ``work`` to each item put, in order, at most ``depth`` queued."""

    def __init__(self, name: str, work: Callable[[T], None], depth: int = 2):
        self.name = name
        self.busy = 0.0  # seconds spent in ``work``
        self.idle = 0.0  # seconds waiting for the next item
        self.error: BaseException | None = None
        self._work = work
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"imgsearch-{name}", daemon=True)
        self._thread.start()

    def put(self, item: T) -> float:
        """Queue ``item``, waiting while the queue is full; the seconds waited. Raises the
        stage's error if it has failed."""
        start = time.perf_counter()
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.05)
                return time.perf_counter() - start
            except queue.Full:
                continue

    def close(self) -> None:
        """No more items: wait until every queued one is done, then raise any error."""
        self._end()
        self._raise()

    def cancel(self) -> None:
        """Finish the item in hand, drop the queued ones, stop. Never raises."""
        self._cancelled.set()
        self._end()

    def _end(self) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=0.05)
                break
            except queue.Full:
                continue
        self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            start = time.perf_counter()
            item = self._queue.get()
            self.idle += time.perf_counter() - start
            if item is _END:
                return
            if self.error is not None or self._cancelled.is_set():
                continue  # drained, so that a putter never waits on a dead stage
            start = time.perf_counter()
            try:
                self._work(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that puts
                self.error = exc
            self.busy += time.perf_counter() - start
