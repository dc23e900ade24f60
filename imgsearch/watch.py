"""``imgsearch watch``: keep an index current while files come, change, move and go.

watchdog reports what happens in the indexed folder (inotify on Linux, FSEvents on macOS,
ReadDirectoryChangesW on Windows; polling where told to, or where inotify has run out of
watches). The paths events name are gathered until the folder has been quiet for a moment
(``QUIET`` seconds after the last event, ``LONGEST`` after the first at most), then one
``Index.add(files=...)`` brings those paths up to date: a library copied in at once is a
few batches, not one run per file. A move names both paths, so the file keeps its vectors;
a folder deleted or moved away is listed as a folder, which drops what was indexed in it.

The watcher holds the index's writer lock from start to stop, so another writer stops at
once and is told that a watcher holds it. Everything goes through ``imgsearch.api``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from imgsearch.api import Index
from imgsearch.errors import ImgsearchError
from imgsearch.files import is_image_name
from imgsearch.results import IndexSummary, Skipped

# Seconds without events before a batch runs: more than the half second watchdog's
# inotify takes to pair a move's halves (or, unpaired, to report the file deleted), so a
# move is one batch and the file keeps its vectors.
QUIET = 1.0
LONGEST = 3.0  # seconds from a batch's first event to its run, however busy the folder
INTERVAL = 1.0  # seconds between two looks at the folder when polling
_TICK = 0.2  # how often the loop looks at its stop flag

# What a second writer is told while a watcher holds the lock (see Store.writer).
BUSY = (
    "a watcher is keeping {name} current ({holder}): it indexes changes as they happen; "
    "stop it (Ctrl-C) to run another writer on this index"
)

# The events that can change what is indexed. Opening and reading a file (as indexing
# does) and a folder's own modification times are left out.
EVENTS = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]
_FOLDER_EVENTS = {"created", "moved", "deleted"}
_FILE_EVENTS = {"created", "modified", "closed", "moved", "deleted"}

# How each observer is named in the first line, by its class name.
_KINDS = {
    "InotifyObserver": "inotify",
    "FSEventsObserver": "FSEvents",
    "KqueueObserver": "kqueue",
    "WindowsApiObserver": "ReadDirectoryChangesW",
}


@dataclass
class Batch:
    """One indexing run of a watcher: the catch-up at start (number 0), then one per
    quiet period with changes."""

    number: int
    paths: int  # paths the events named; 0 for the catch-up, which looks at everything
    summary: IndexSummary

    @property
    def catch_up(self) -> bool:
        return self.number == 0

    def to_dict(self) -> dict:
        return {
            "batch": self.number,
            "catch_up": self.catch_up,
            "paths": self.paths,
            **self.summary.to_dict(),
        }


@dataclass
class Totals:
    """What a watcher did from start to stop."""

    batches: int = 0
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    interrupted: bool = False  # stopped in the middle of a batch (what was done is kept)
    observer: str = ""  # how it watched last: 'inotify', 'polling every 1 s', ...

    def count(self, summary: IndexSummary) -> None:
        self.batches += 1
        self.added += summary.added
        self.updated += summary.updated
        self.moved += summary.moved
        self.removed += summary.removed


class Changes(FileSystemEventHandler):
    """The paths events name (relative to the root, in POSIX form), gathered until the
    folder is quiet. Hidden files and folders (the index's own ``.imgsearch`` among them)
    and names that are not images are left out; folders are kept, standing for all below."""

    def __init__(self, root: Path, quiet: float = QUIET, longest: float = LONGEST):
        super().__init__()
        self.root = root
        self.quiet = quiet
        self.longest = longest
        self._lock = threading.Lock()
        self._paths: dict[str, None] = {}  # in the order they came
        self._first = self._last = 0.0
        self.events = 0  # events that named at least one path, since the start

    def on_any_event(self, event: FileSystemEvent) -> None:
        wanted = _FOLDER_EVENTS if event.is_directory else _FILE_EVENTS
        if event.event_type not in wanted:
            return
        raw = [event.src_path]
        if event.event_type == "moved":
            raw.append(event.dest_path)
        paths = [p for p in (self.relative(r, event.is_directory) for r in raw) if p]
        if paths:
            self.add(paths)

    def relative(self, raw: str | bytes, is_directory: bool) -> str | None:
        """The event's path as the index names it, or None for one it does not index."""
        try:
            relative = Path(os.fsdecode(raw)).relative_to(self.root)
        except ValueError:
            return None
        parts = relative.parts
        if not parts or any(part.startswith(".") for part in parts):
            return None
        if not is_directory and not is_image_name(parts[-1]):
            return None
        return relative.as_posix()

    def add(self, paths: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._paths:
                self._first = now
            self._last = now
            self._paths.update(dict.fromkeys(paths))
            self.events += 1

    def due(self, now: float) -> float | None:
        """Seconds until the gathered paths are due for a batch (0 or less: now); None
        when there are none."""
        with self._lock:
            if not self._paths:
                return None
            return min(self._last + self.quiet, self._first + self.longest) - now

    def take(self) -> list[str]:
        with self._lock:
            paths, self._paths = list(self._paths), {}
        return paths


@dataclass
class Watcher:
    """Keeps ``index`` current while ``run`` runs; ``stop`` (from any thread, or from a
    signal handler) ends it. ``on_batch`` gets every batch, ``on_skip`` every file a batch
    skips, ``say`` one-line notes (which observer, a fallback to polling)."""

    index: Index
    polling: bool = False
    interval: float = INTERVAL
    quiet: float = QUIET
    longest: float = LONGEST
    on_batch: Callable[[Batch], None] | None = None
    on_skip: Callable[[Skipped], None] | None = None
    say: Callable[[str], None] | None = None
    on_start: Callable[[], None] | None = None  # once the lock is held and events flow
    totals: Totals = field(default_factory=Totals)
    working: str | None = None  # 'a batch' or 'the model' while indexing or loading
    stopping: bool = False

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ImgsearchError(f"--interval must be more than 0 seconds, not {self.interval}")
        self.root = self.index.root
        self.changes = Changes(self.root, self.quiet, self.longest)

    def stop(self) -> None:
        """Ask the watcher to stop: at once when it is waiting, after the batch under way
        otherwise (``stop_on_signals`` interrupts that batch instead)."""
        self.stopping = True

    def run(self) -> Totals:
        """Watch until stopped: the writer lock held throughout, one catch-up run for what
        changed while nobody watched, then a batch per quiet period with changes."""
        if not self.root.is_dir():
            raise ImgsearchError(f"the indexed folder {self.root} is missing")
        with self.index.writer(BUSY):
            self._observer = self._observe()
            try:
                if self.on_start is not None:
                    self.on_start()
                self._batch(None)
                self._warm_up()
                self._loop()
            except KeyboardInterrupt:  # Ctrl-C between batches, where no handler took it
                self.stopping = True
            finally:
                _halt(self._observer)
        return self.totals

    def _loop(self) -> None:
        while not self.stopping:
            wait = self.changes.due(time.monotonic())
            if wait is not None and wait <= 0:
                self._batch(self.changes.take())
            elif not _watching(self._observer):
                self._replace()
            else:
                time.sleep(_TICK if wait is None else min(wait, _TICK))

    def _batch(self, paths: list[str] | None) -> None:
        """One indexing run: the whole folder (``None``) or the paths events named."""
        if self.stopping:
            return
        self.working = "a batch"
        try:
            summary = self.index.add(files=paths, on_skip=self._skipped)
        except KeyboardInterrupt:
            self.totals.interrupted = True
            self.stopping = True
            return
        finally:
            self.working = None
        summary.skipped = [s for s in summary.skipped if not s.listed_missing]
        self.totals.count(summary)
        if self.on_batch is not None:
            self.on_batch(Batch(self.totals.batches - 1, len(paths or ()), summary))

    def _warm_up(self) -> None:
        """Load the model now (the catch-up may not have needed it), so that the first
        change is searchable in a second or two rather than after the model's start."""
        if self.stopping:
            return
        self.working = "the model"
        try:
            self.index.model  # noqa: B018 - the property loads it
        except KeyboardInterrupt:
            self.stopping = True
        finally:
            self.working = None

    def _skipped(self, skip: Skipped) -> None:
        # A path named by an event with nothing there and nothing indexed there: a file
        # that came and went between two batches (a download's temporary name, say).
        if self.on_skip is not None and not skip.listed_missing:
            self.on_skip(skip)

    def _observe(self) -> BaseObserver:
        """A running observer: the platform's own, or polling when told to or when the
        inotify limits are reached."""
        if not self.polling:
            observer = Observer()
            try:
                self._start(observer)
                return observer
            except OSError as exc:
                _halt(observer)
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise ImgsearchError(f"cannot watch {self.root}: {exc.strerror}") from None
                self._note(
                    f"inotify cannot watch {self.root}: {exc.strerror or exc} (the limit is "
                    "fs.inotify.max_user_watches, with fs.inotify.max_user_instances; raise "
                    f"them with sysctl for instant events); polling every {self.interval:g} s "
                    "instead"
                )
        observer = PollingObserver(timeout=self.interval)
        self._start(observer)
        return observer

    def _start(self, observer: BaseObserver) -> None:
        observer.schedule(self.changes, str(self.root), recursive=True, event_filter=EVENTS)
        observer.start()
        kind = type(observer).__name__
        polled = isinstance(observer, PollingObserver)
        self.totals.observer = (
            f"polling every {self.interval:g} s" if polled else _KINDS.get(kind, kind)
        )

    def _replace(self) -> None:
        """The observer stopped (inotify out of watches for a new folder, say): poll from
        here on, and catch up on what it may have missed."""
        _halt(self._observer)
        if not self.root.is_dir():
            raise ImgsearchError(f"the watched folder {self.root} is gone")
        if isinstance(self._observer, PollingObserver):
            raise ImgsearchError(f"watching {self.root} stopped")
        self._note(
            f"{self.totals.observer} stopped reporting changes in {self.root} (is "
            f"fs.inotify.max_user_watches reached?); polling every {self.interval:g} s instead"
        )
        self.polling = True
        self._observer = self._observe()
        self._batch(None)

    def _note(self, message: str) -> None:
        if self.say is not None:
            self.say(message)


def _watching(observer: BaseObserver) -> bool:
    return observer.is_alive() and all(e.is_alive() for e in observer.emitters)


def _halt(observer: BaseObserver) -> None:
    """Stop an observer and wait for its threads, whether it got going or not."""
    observer.stop()
    if observer.is_alive():
        observer.join()


@contextlib.contextmanager
def stop_on_signals(watcher: Watcher) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM stop ``watcher`` cleanly: at once while it waits, and
    in the middle of a batch by interrupting it (what the batch finished is kept, as for
    an interrupted ``imgsearch index``). For the main thread, which alone gets signals."""

    def stop(_signum: int, _frame: object) -> None:
        watcher.stop()
        if watcher.working:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the main thread as Ctrl-C does (a KeyboardInterrupt), so a server
    with a watcher beside it ends as cleanly as after Ctrl-C: the watcher stopped, its
    lock released, exit code 0."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def in_background(
    db: str | os.PathLike | None,
    polling: bool = False,
    interval: float = INTERVAL,
    on_batch: Callable[[Batch], None] | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> Iterator[Watcher]:
    """A watcher on the index at ``db`` (found from the current folder where None) in a
    thread of its own, with an ``Index`` of its own, while the body runs (``imgsearch
    serve --watch``). It has the writer lock when the body starts: a lock held by
    another writer is an error here. At the end it is stopped and waited for (a batch
    under way is finished first)."""
    started = threading.Event()  # set once the watcher runs, or has failed to start
    running: list[Watcher] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with Index.open(db) as index:
                watcher = Watcher(index, polling, interval, on_batch=on_batch, on_skip=on_skip)
                watcher.say = say
                watcher.on_start = lambda: (running.append(watcher), started.set())
                watcher.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the thread that waits
            failed.append(exc)
            if running and say is not None:
                why = exc if isinstance(exc, ImgsearchError) else f"{type(exc).__name__}: {exc}"
                say(f"watching stopped: {why}")
        finally:
            started.set()

    thread = threading.Thread(target=run, name="imgsearch-watch", daemon=True)
    thread.start()
    started.wait()
    if not running:
        raise failed[0] if failed else ImgsearchError("the watcher did not start")
    watcher = running[0]
    try:
        yield watcher
    finally:
        watcher.stop()
        if watcher.working and say is not None:
            loading = (
                "loading the model" if watcher.working == "the model" else "the batch under way"
            )
            say(f"the watcher is finishing {loading} first (Ctrl-C again to stop at once)")
        thread.join()
