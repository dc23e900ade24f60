"""`imgsearch watch` and `serve --watch` on real folders: files arrive, change, move and
go while a watcher runs, and each change is searchable soon after (README: Watching a
folder). Watchers run in a thread (stopped through ``Watcher.stop``) or as the real
command in a subprocess (stopped with SIGINT or SIGTERM)."""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from imgsearch import Index
from imgsearch.watch import Batch, Watcher
from tests.browser import free_port, request
from tests.conftest import sample, write_photos
from tests.test_cli import run

DEADLINE = 20.0  # seconds any one change may take to show


def wait_for(what: str, check: Callable[[], object], deadline: float = DEADLINE) -> object:
    """Poll ``check`` until it returns something true; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline} s: {what}")
        time.sleep(0.1)


_READERS: dict[Path, Index] = {}
_QUERY = sample("coins").resize((64, 64))


def searchable(db: Path) -> set[str]:
    """What a query finds in the index (every image, k being larger than the folder),
    asked as a long-lived reader does (``imgsearch serve``): one ``Index``, refreshed."""
    index = _READERS.get(db)
    if index is None:
        index = _READERS[db] = Index.open(db)
    index.refresh()
    hits = index.query(_QUERY, k=500)
    return {Path(h.path).relative_to(index.root).as_posix() for h in hits}


@pytest.fixture(autouse=True)
def _close_readers() -> Iterator[None]:
    yield
    for index in _READERS.values():
        index.close()
    _READERS.clear()


def small_photo(name: str, turn: int = 0) -> Image.Image:
    return sample(name).resize((96, 72)).rotate(turn)


@pytest.fixture
def library(tmp_path: Path, tiny_clip: Path, small_bank: Path) -> Path:
    """Three photos, indexed with the tiny CLIP; returns the index file."""
    folder = tmp_path / "photos"
    write_photos(folder, ["chelsea", "coffee", "rocket"])
    with Index.create(folder, model=str(tiny_clip), captions=small_bank) as index:
        assert index.add().added == 3
    return folder / ".imgsearch" / "index.db"


@contextmanager
def watching(db: Path, **options: object) -> Iterator[tuple[Watcher, list[Batch], list[str]]]:
    """A watcher on ``db`` in a thread, once it holds the lock and has caught up; yields
    it, its batches and its notes, and stops it (and waits for it) at the end."""
    batches: list[Batch] = []
    notes: list[str] = []
    index = Index.open(db)
    watcher = Watcher(index, on_batch=batches.append, say=notes.append, **options)
    failed: list[BaseException] = []

    def target() -> None:
        try:
            watcher.run()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            failed.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_for("the catch-up run", lambda: batches or failed)
    try:
        yield watcher, batches, notes
    finally:
        watcher.stop()
        thread.join(timeout=30)
        index.close()
    assert not thread.is_alive(), "the watcher did not stop"
    assert not failed, failed


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_new_changed_moved_and_deleted_photos_are_followed(library: Path, polling: bool) -> None:
    root = library.parent.parent
    # Quiet for longer than inotify's half second to pair a move's two halves: a file moved
    # into a folder made just before (no watch on it yet) shows as deleted only then.
    options = {"polling": polling, "interval": 0.2, "quiet": 0.7}
    with watching(library, **options) as (watcher, batches, _):
        assert watcher.totals.observer == ("polling every 0.2 s" if polling else "inotify")
        assert batches[0].catch_up and batches[0].summary.unchanged == 3

        small_photo("horse").save(root / "horse.jpg")  # new
        wait_for("the new photo", lambda: "horse.jpg" in searchable(library))

        before = Index.open(library).image_file(root / "chelsea.jpg")
        small_photo("astronaut").save(root / "chelsea.jpg")  # changed in place
        stat = (root / "chelsea.jpg").stat()

        def changed() -> bool:
            with Index.open(library) as index:
                now = index.image_file(root / "chelsea.jpg")
                return now is not None and (now.size, now.mtime_ns) == (
                    stat.st_size,
                    stat.st_mtime_ns,
                )

        wait_for("the changed photo", changed)
        with Index.open(library) as index:
            assert index.image_file(root / "chelsea.jpg").hash != before.hash

        coffee = Index.open(library).image_file(root / "coffee.jpg")
        (root / "cups").mkdir()
        (root / "coffee.jpg").rename(root / "cups" / "mug.jpg")  # moved into a new folder
        wait_for("the moved photo", lambda: "cups/mug.jpg" in searchable(library))
        found = searchable(library)
        assert "coffee.jpg" not in found
        with Index.open(library) as index:
            assert index.image_file(root / "cups" / "mug.jpg").id == coffee.id  # kept as it was

        (root / "rocket.jpg").unlink()  # deleted
        wait_for("the deleted photo gone", lambda: "rocket.jpg" not in searchable(library))

        (root / ".hidden").mkdir()
        small_photo("coins").save(root / ".hidden" / "secret.jpg")
        (root / "notes.txt").write_text("not a photo")
        time.sleep(1.0)  # nothing to index: no batch
        assert searchable(library) == {"chelsea.jpg", "horse.jpg", "cups/mug.jpg"}
    summaries = [b.summary for b in batches[1:]]
    assert sum(s.added for s in summaries) == 1
    assert sum(s.updated for s in summaries) == 1
    assert sum(s.moved for s in summaries) == 1
    assert sum(s.removed for s in summaries) == 1
    assert not any(s.skipped for s in summaries)
    assert Index.open(library).add().unchanged == 3  # the lock is free again


def test_a_library_copied_in_at_once_is_a_few_batches(library: Path, tmp_path: Path) -> None:
    root = library.parent.parent
    outside = tmp_path / "camera"
    (outside / "day1").mkdir(parents=True)
    (outside / "day2").mkdir()
    names = ["chelsea", "coffee", "rocket", "horse", "astronaut", "coins"]
    for i in range(60):
        small_photo(names[i % 6], turn=i * 6).save(outside / f"day{i % 2 + 1}" / f"{i:02d}.jpg")
    with watching(library) as (_, batches, _):
        shutil.copytree(outside, root / "camera")
        wait_for("the copied photos", lambda: len(searchable(library)) == 63)
    changes = batches[1:]
    assert 1 <= len(changes) <= 3, [b.to_dict() for b in changes]
    assert sum(b.summary.added for b in changes) == 60


def test_out_of_inotify_watches_it_polls_and_says_so(
    library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchdog.observers import inotify

    def no_watches(self: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(inotify.InotifyEmitter, "on_thread_start", no_watches)
    root = library.parent.parent
    with watching(library, interval=0.2, quiet=0.3) as (watcher, _, notes):
        assert watcher.totals.observer == "polling every 0.2 s"
        assert len(notes) == 1 and "fs.inotify.max_user_watches" in notes[0], notes
        assert "polling every 0.2 s instead" in notes[0]
        small_photo("horse").save(root / "horse.jpg")
        wait_for("the new photo", lambda: "horse.jpg" in searchable(library))


def test_a_listed_folder_stands_for_everything_below_it(library: Path) -> None:
    root = library.parent.parent
    (root / "trip" / "day1").mkdir(parents=True)
    small_photo("horse").save(root / "trip" / "day1" / "horse.jpg")
    small_photo("coins").save(root / "trip" / "coins.jpg")
    with Index.open(library) as index:
        summary = index.add(files=["trip"])
        assert (summary.added, summary.skipped) == (2, [])
        shutil.rmtree(root / "trip")
        summary = index.add(files=[root / "trip"])
        assert (summary.removed, summary.skipped) == (2, [])
        assert index.add(files=["gone.jpg"]).skipped[0].listed_missing
    assert searchable(library) == {"chelsea.jpg", "coffee.jpg", "rocket.jpg"}


class Lines:
    """A subprocess's output, line by line as it comes, read by a thread."""

    def __init__(self, stream: object):
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def next(self, what: str, deadline: float = DEADLINE) -> str:
        try:
            line = self.lines.get(timeout=deadline)
        except queue.Empty:
            pytest.fail(f"not within {deadline} s: {what} (so far: {self.seen})")
        self.seen.append(line)
        return line


def command(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_the_command_holds_the_lock_prints_batches_and_stops_on_ctrl_c(library: Path) -> None:
    root = library.parent.parent
    child = command("watch", str(root), "--json", cwd=root)
    try:
        out, err = Lines(child.stdout), Lines(child.stderr)
        assert "(inotify); Ctrl-C stops" in err.next("the first note")
        catch_up = json.loads(out.next("the catch-up line"))
        assert catch_up["catch_up"] and catch_up["unchanged"] == 3

        small_photo("horse").save(root / "horse.jpg")
        batch = json.loads(out.next("a batch line"))
        assert (batch["batch"], batch["paths"], batch["added"]) == (1, 1, 1), batch
        assert "horse.jpg" in searchable(library)

        second = run("index", str(root), "-q")
        assert second.exit_code == 1
        message = second.stderr.strip()
        assert message.startswith(f"imgsearch: error: a watcher is keeping {library} current"), (
            message
        )
        assert f"(PID {child.pid}: imgsearch watch {root} --json)" in message
        assert "stop it (Ctrl-C)" in message and len(message.splitlines()) == 1

        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0
        last = err.next("the final line")
        assert last.startswith(f"imgsearch: stopped watching {root} after 2 batches: added 1")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    rest = child.stderr.read() if child.stderr else ""
    assert "Traceback" not in rest, rest
    assert run("index", str(root), "-q").exit_code == 0  # the lock was let go
    assert not list(library.parent.glob("*.holder"))


def test_serve_watch_picks_up_new_photos_and_stops_on_sigterm(library: Path) -> None:
    root = library.parent.parent
    port = free_port()
    child = command("serve", "--watch", "--polling", "--port", str(port), cwd=root)
    try:
        url = Lines(child.stdout).next("the address", deadline=60).strip()
        assert url == f"http://127.0.0.1:{port}/"

        def images() -> int:
            return json.loads(request(url, "/api/status", timeout=10)[1])["images"]

        assert images() == 3
        small_photo("horse").save(root / "horse.jpg")
        wait_for("the new photo in the server", lambda: images() == 4)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    err = child.stderr.read() if child.stderr else ""
    assert "watching" in err and "(polling every 1 s)" in err, err
    assert "batch 1 (1 path): added 1" in err, err
    assert f"stopped watching {root} after 2 batches" in err and "Traceback" not in err, err
