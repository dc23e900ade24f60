"""Stages on threads, each behind a bounded queue: a batch moves on as soon as its stage is
done with it, so the slowest stage alone sets the pace of an indexing run (decoding, the
model, the caption search and the writer no longer take turns on one thread).

A stage that fails keeps its error and drops what it is given from then on; whoever puts
the next item, or closes it, gets that very exception (a full disk is still one line at the
CLI). Cancelling lets the item in hand finish (a batch being written is committed or rolled
back as a whole) and drops the rest.

``ProcessStage`` is the same stage in a child process, for work whose Python time would
otherwise hold the GIL against the other stages (the writer beside a GPU).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from multiprocessing.connection import Connection
from typing import Generic, TypeVar

from imgsearch.errors import ImgsearchError

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


# How long ``cancel`` waits for the child to finish the item in hand before killing it
# (a batch is committed or rolled back as a whole either way).
CANCEL_WAIT_S = 60.0


class RemoteTraceback(Exception):
    """The child's traceback, as the cause of its error raised in the parent."""

    def __str__(self) -> str:
        return str(self.args[0])


class ProcessStage(Generic[T]):
    """``Stage`` with its work in a child process (spawned, never forked: the parent runs
    torch threads), so that the work's Python time no longer holds this process's GIL.

    ``opener`` runs in the child, once: a context manager (picklable, e.g. a partial of a
    module-level function) that gives the work function and cleans up after it (opens a
    database and closes it). Items travel pickled over a pipe; at most ``depth`` are in
    flight (sent, not yet done), and ``put`` waits while that many are. ``done`` runs in
    this process, on the thread that puts or closes, for each item the child has finished,
    in order. ``busy`` is the seconds the child spent in the work.

    The child ignores SIGINT (Ctrl-C reaches the whole process group; the parent decides),
    and it stops when the parent closes or cancels it, or dies: its end of the pipe reads
    EOF then, and it exits after the item in hand. An error in the child (or in opening)
    reaches ``put`` and ``close`` as the same exception, type and message, where it pickles.

    One thread at a time uses it (the indexer's caption thread puts, then the main thread
    closes or cancels once that thread has stopped).

    Starting a child (an interpreter, then the opener's module and what it imports) takes a
    second or more; a run of a few seconds beside a GPU waited for it with its first
    batches. So when a stage closes it leaves a spare child behind, started with the same
    name and the opener's module imported, which the next stage of that name in this
    process takes (a server's, a watcher's or a benchmark's next run); it waits for its
    opener, and exits when this process does.
    """

    def __init__(
        self,
        name: str,
        opener: Callable[[], AbstractContextManager[Callable[[T], None]]],
        depth: int = 2,
        done: Callable[[T], None] | None = None,
    ):
        self.name = name
        self.busy = 0.0  # seconds the child spent in the work
        self.error: BaseException | None = None
        self._depth = max(1, depth)
        self._done = done
        self._in_flight: deque[T] = deque()
        self._ended = False  # the child has gone (closed, cancelled, died)
        self._preload = _module_of(opener)
        self._process, self._conn = _take_spare(name) or _start_child(name, self._preload)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox.put(("open", opener))  # the child's first message, sent in order
        self._unsent = False  # the sender found the child gone
        self._sender = threading.Thread(
            target=self._send_all, name=f"imgsearch-{name}-send", daemon=True
        )
        self._sender.start()

    def _send_all(self) -> None:
        """Send what ``put``, ``close`` and ``cancel`` queue, in order, on a thread of its
        own: pickling a batch and writing it into the pipe (which waits while the child,
        busy writing the one before, reads it 64 KB at a time) held up the thread that puts
        by up to 130 ms a batch (ViT-L/14 on the H200)."""
        while True:
            message = self._outbox.get()
            if message is None:
                return
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the child has gone, or the pipe is closed
                self._unsent = True
                return
            if message[0] not in ("open", "put"):
                return

    def put(self, item: T) -> float:
        """Send ``item``, waiting while ``depth`` items are in flight; the seconds waited.
        Raises the child's error if it has failed."""
        start = time.perf_counter()
        self._receive(block=False)
        while len(self._in_flight) >= self._depth:
            self._raise()
            if self._ended:
                self._lost()
            self._receive(block=True)
        self._raise()
        if self._ended or self._unsent:  # the child has gone: its last words say why
            self._receive(block=False)
            self._raise()
            self._lost()
        self._in_flight.append(item)
        self._outbox.put(("put", item))
        return time.perf_counter() - start

    def close(self) -> None:
        """No more items: wait until every one sent is done, then raise any error."""
        if not self._ended:
            self._outbox.put(("end",))
            while self._in_flight and self.error is None and not self._ended:
                self._receive(block=True)
            self._finish()
            _leave_spare(self.name, self._preload)  # not after a cancel: that ends a run
        self._raise()
        if self._in_flight:
            self._lost()

    def cancel(self) -> None:
        """Let the child finish the item in hand (committed or rolled back as a whole), drop
        the ones queued, and wait for it to exit. Never raises."""
        if self._ended:
            return
        with contextlib.suppress(queue.Empty):  # batches not sent yet: the child never sees them
            while True:
                self._outbox.get_nowait()
        self._outbox.put(("cancel",))
        deadline = time.monotonic() + CANCEL_WAIT_S
        with contextlib.suppress(BaseException):
            while not self._ended and time.monotonic() < deadline:
                if self._conn.poll(0.05):
                    self._read(call_done=False)
        self._finish(wait=max(0.0, deadline - time.monotonic()))

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _receive(self, block: bool) -> None:
        """Handle what the child has said: everything waiting, or (``block``) at least one
        message. Raises whatever ``done`` raises."""
        while not self._ended and (block or self._conn.poll()):
            self._read(call_done=True)
            block = False

    def _read(self, call_done: bool) -> None:
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            self._finish()
            return
        except Exception as exc:  # noqa: BLE001 - a message that would not unpickle
            self.error = self.error or ImgsearchError(f"the {self.name} process: {exc}")
            return
        kind = message[0]
        if kind == "done":
            self.busy += message[1]
            item = self._in_flight.popleft()
            if call_done and self._done is not None and self.error is None:
                try:
                    self._done(item)
                except BaseException as exc:
                    self.error = exc
                    raise
        elif kind == "error":
            _, error, remote, busy = message
            self.busy += busy
            error.__cause__ = RemoteTraceback(remote)
            self.error = self.error or error

    def _finish(self, wait: float | None = None) -> None:
        """The child has ended, or is told to: join it (killing it after ``wait`` s)."""
        self._ended = True
        self._outbox.put(None)  # the sender stops after what it is sending
        self._process.join(wait)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        if self._sender is not threading.current_thread():
            self._sender.join(5)  # a send to a child that has gone fails at once
        with contextlib.suppress(OSError):
            self._conn.close()

    def _lost(self) -> None:
        self._finish()
        code = self._process.exitcode
        raise ImgsearchError(
            f"the {self.name} process stopped unexpectedly (exit code {code}); "
            "what it finished is kept: run it again to go on"
        )

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def _failing_opener(exc: Exception) -> Callable[[], AbstractContextManager[Callable]]:
    @contextlib.contextmanager
    def opener():  # noqa: ANN202 - a context manager
        raise exc
        yield

    return opener


def _block_sigint() -> set[int] | None:
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _restore_mask(mask: set[int] | None) -> None:
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# Spare children by stage name: (process, the parent's end of its pipe). See ProcessStage.
_SPARES: dict[str, tuple[multiprocessing.process.BaseProcess, Connection]] = {}


def _module_of(opener: Callable[..., object]) -> str | None:
    """The module an opener (a function, or a partial of one) lives in: what a spare
    imports before it is needed."""
    func = getattr(opener, "func", opener)
    return getattr(func, "__module__", None)


def _start_child(
    name: str, preload: str | None
) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    context = multiprocessing.get_context("spawn")
    conn, child_end = context.Pipe(duplex=True)
    process = context.Process(
        target=_child_main,
        args=(child_end, os.getpid(), preload),
        name=f"imgsearch-{name}",
        daemon=True,  # ended at this interpreter's exit, should it get that far
    )
    # The child starts with SIGINT blocked until it has ignored it (the mask survives fork
    # and exec): a Ctrl-C while it imports prints no traceback of its own.
    blocked = _block_sigint()
    try:
        process.start()
    finally:
        _restore_mask(blocked)
    child_end.close()  # only the child's copy is left: its death reads as EOF here
    return process, conn


def _take_spare(name: str) -> tuple[multiprocessing.process.BaseProcess, Connection] | None:
    """The spare child for a stage called ``name``, if one is waiting alive."""
    spare = _SPARES.pop(name, None)
    if spare is not None and not spare[0].is_alive():
        spare[1].close()
        return None
    return spare


def _leave_spare(name: str, preload: str | None) -> None:
    """Start the spare child for the next stage called ``name`` (one at most)."""
    spare = _SPARES.get(name)
    if spare is not None and spare[0].is_alive():
        return
    with contextlib.suppress(OSError, RuntimeError):  # no spare then: the next one starts its own
        _SPARES[name] = _start_child(name, preload)


def _child_main(conn, parent: int, preload: str | None) -> None:  # noqa: ANN001 - a Connection
    """The child's side of ``ProcessStage``: it imports ``preload``, waits for its opener
    (the first message), then a thread reads the pipe (so that the parent's sends never
    wait for the work) while this thread works through what it read, in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if preload:
        with contextlib.suppress(Exception):  # a failed import shows again where it is used
            importlib.import_module(preload)
    try:
        first = conn.recv()
    except (EOFError, OSError):  # the parent ended without needing this spare
        return
    except Exception as exc:  # noqa: BLE001 - an opener that does not unpickle here
        first = ("open", _failing_opener(exc))
    if first[0] != "open":  # cancelled before its opener was sent
        return
    opener = first[1]
    inbox: queue.Queue = queue.Queue()
    stop = threading.Event()  # cancelled, or the parent is gone: drop what is queued

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the parent died (or closed without a word)
                stop.set()
                inbox.put(("gone",))
                return
            if message[0] == "cancel":
                stop.set()
            inbox.put(message)
            if message[0] in ("end", "cancel"):
                return

    threading.Thread(target=read, name="imgsearch-pipe", daemon=True).start()
    failed = False

    def report(exc: BaseException, busy: float) -> None:
        remote = "".join(traceback.format_exception(exc))
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)
        except Exception:  # noqa: BLE001 - an exception that does not travel: its words do
            exc = ImgsearchError(f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(OSError):
            conn.send(("error", exc, remote, busy))

    try:
        with opener() as work:
            while True:
                try:
                    message = inbox.get(timeout=1.0)
                except queue.Empty:
                    if os.getppid() != parent:  # adopted: the parent is gone
                        return
                    continue
                if stop.is_set() or message[0] != "put":
                    return
                if failed:
                    continue  # after an error, the rest is dropped
                start = time.perf_counter()
                try:
                    work(message[1])
                except Exception as exc:  # noqa: BLE001 - the parent raises it
                    failed = True
                    report(exc, time.perf_counter() - start)
                    continue
                with contextlib.suppress(OSError):
                    conn.send(("done", time.perf_counter() - start))
    except Exception as exc:  # noqa: BLE001 - opening (or closing) failed: the parent raises it
        report(exc, 0.0)
    finally:
        conn.close()
