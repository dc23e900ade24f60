"""Decoded photos back from decode processes through shared memory, not their result pipe.

A chunk of 32 photos at 224x224 is 4.8 MB. Through a process pool's result pipe it is
pickled in the worker, then read a pipe-full at a time and unpickled by one thread of the
indexing process that takes the interpreter lock for each piece: on the H200 those threads
held the lock more than the model's (docs/performance.md, the fourth round). Here each
task in flight gets a slot, a shared-memory segment of ``rows`` photos; the worker writes
its pixels there and sends back only the rest of each ``Pixels``; the parent copies the
rows out (one memcpy each) and frees the slot.

Best effort, never a failure: without a slot free, without /dev/shm, with it full or too
small, or should a worker fail to open the segment, the pixels come back through the pipe
as before. Each slot's memory is reserved when it is made (``posix_fallocate``), so a full
/dev/shm refuses a slot instead of killing a worker with SIGBUS as it writes. The parent's
``SharedMemory`` is registered with multiprocessing's resource tracker, which removes the
segments should this process be killed; workers open them as plain files and never
register them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from imgsearch.files import DEFAULT_LIMITS, Limits, Pixels, Preprocess, load_chunk

# The benchmark's ``pipe-pixels`` variant turns it off, to compare.
ENABLED = True

SHM_DIR = Path("/dev/shm")
# At most this much of /dev/shm for one run's slots, and never more than a quarter of what
# is free there (a container's default /dev/shm is 64 MB).
MOST_BYTES = 256 << 20


@dataclass(frozen=True)
class SlotRef:
    """What a worker needs to write into a slot: the segment's file and its shape."""

    path: str
    rows: int
    side: int

    @property
    def row_bytes(self) -> int:
        return self.side * self.side * 3

    @property
    def size(self) -> int:
        return self.rows * self.row_bytes


def load_chunk_into(
    paths: list[Path], preprocess: Preprocess, limits: Limits, slot: SlotRef
) -> tuple[list[Pixels], list[int]]:
    """``load_chunk`` in a worker, each photo's pixels written to its row of ``slot``:
    the pixels with those arrays taken out, and the rows written. A photo that does not
    fit the slot's shape, or every photo where the slot cannot be opened, keeps its array."""
    pixels = load_chunk(paths, preprocess, limits)
    shape = (slot.side, slot.side, 3)
    rows = [
        row
        for row, item in enumerate(pixels[: slot.rows])
        if item.array is not None and item.array.shape == shape and item.array.dtype == np.uint8
    ]
    size = slot.row_bytes
    try:
        with open(slot.path, "r+b") as file, mmap.mmap(file.fileno(), slot.size) as memory:
            for row in rows:
                array = np.ascontiguousarray(pixels[row].array)
                memory[row * size : (row + 1) * size] = array.data.cast("B")
    except (OSError, ValueError):  # gone (the run ended) or not what it should be
        return pixels, []
    for row in rows:
        pixels[row].array = None
    return pixels, rows


class _Slot:
    def __init__(self, rows: int, side: int):
        size = SlotRef("", rows, side).size
        self.memory = SharedMemory(create=True, size=size)
        self.ref = SlotRef(str(SHM_DIR / self.memory.name.lstrip("/")), rows, side)
        try:
            descriptor = os.open(self.ref.path, os.O_RDWR)
            try:
                os.posix_fallocate(descriptor, 0, size)  # ENOSPC here, not SIGBUS later
            finally:
                os.close(descriptor)
        except (OSError, AttributeError):
            self.close()
            raise OSError("no room for a slot") from None
        self.rows = np.ndarray((rows, side, side, 3), np.uint8, buffer=self.memory.buf)

    def close(self) -> None:
        self.rows = None  # the view first: a segment with a live view cannot be closed
        with contextlib.suppress(BufferError):
            self.memory.close()
        with contextlib.suppress(FileNotFoundError):
            self.memory.unlink()


class Job:
    """A chunk submitted to a pool: ``result()`` gives its pixels with their arrays, as
    ``load_chunk`` does; ``cancel()`` as a future's."""

    def __init__(self, slabs: Slabs, future: Future, slot: _Slot | None):
        self._slabs, self._future, self._slot = slabs, future, slot

    def result(self) -> list[Pixels]:
        if self._slot is None:
            return self._future.result()
        slot, self._slot = self._slot, None
        try:
            pixels, written = self._future.result()
            assert slot.rows is not None
            for row in written:
                pixels[row].array = slot.rows[row].copy()
            self._slabs.shared += len(written)
            return pixels
        finally:
            self._slabs._free.append(slot)

    def cancel(self) -> bool:
        cancelled = self._future.cancel()
        if cancelled and self._slot is not None:
            self._slabs._free.append(self._slot)
            self._slot = None
        return cancelled


class Slabs:
    """Up to ``slots`` slots of ``rows`` photos of ``side`` x ``side``, made as they are
    first needed; one owner thread submits and collects. ``close()`` removes them."""

    def __init__(self, slots: int, rows: int, side: int):
        self.rows, self.side = rows, side
        self.most = _affordable(slots, SlotRef("", rows, side).size) if ENABLED else 0
        self._made: list[_Slot] = []
        self._free: list[_Slot] = []
        self.shared = 0  # photos that came back through shared memory

    def submit(
        self,
        pool: Executor,
        paths: list[Path],
        preprocess: Preprocess,
        limits: Limits = DEFAULT_LIMITS,
    ) -> Job:
        slot = self._slot() if preprocess.crop == self.side else None
        if slot is None:
            return Job(self, pool.submit(load_chunk, paths, preprocess, limits), None)
        return Job(self, pool.submit(load_chunk_into, paths, preprocess, limits, slot.ref), slot)

    def _slot(self) -> _Slot | None:
        if self._free:
            return self._free.pop()
        if len(self._made) >= self.most:
            return None
        try:
            slot = _Slot(self.rows, self.side)
        except OSError:
            self.most = len(self._made)  # /dev/shm refused: no more tries this run
            return None
        self._made.append(slot)
        return slot

    def close(self) -> None:
        for slot in self._made:
            slot.close()
        self._made, self._free, self.most = [], [], 0

    def __enter__(self) -> Slabs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _affordable(slots: int, slot_bytes: int) -> int:
    """How many of ``slots`` slots this machine's /dev/shm can spare: none without one."""
    try:
        stats = os.statvfs(SHM_DIR)
    except (OSError, AttributeError):
        return 0
    free = stats.f_bavail * stats.f_frsize
    return max(0, min(slots, min(MOST_BYTES, free // 4) // max(1, slot_bytes)))
