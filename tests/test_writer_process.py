"""The writer in a child process (``pipeline.ProcessStage``, ``local_runner(writer_process=)``):
the same rows as the writer thread, its errors raised in the parent as the thread's would
be, and a consistent database when the parent is interrupted or killed, with no child left.
Real SQLite files and real photos; the offline model on this CPU, the child forced on."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from imgsearch import ImgsearchError, Index, indexer
from imgsearch.pipeline import ProcessStage, Stage
from imgsearch.storage import ImageRecord, Store
from tests.conftest import consistent_index, ctrl_c_as_in_a_terminal, sample
from tests.test_index import _many_photos

PHOTO_NAMES = ("chelsea", "coffee", "rocket", "astronaut")


def _photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    base = [sample(n).resize((96, 72)) for n in PHOTO_NAMES]
    for i in range(count):
        base[i % 4].rotate(i * 11 % 360).save(folder / f"p{i:03d}.jpg", quality=85)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def _add(index: Index, writer_process: bool, batch_size: int = 4, **kwargs) -> indexer.IndexSummary:
    """``indexer.update`` as ``Index.add`` runs it, with the writer chosen."""
    runner = indexer.local_runner(
        index.root, index.embedding, batch_size, 1, writer_process=writer_process
    )
    with index.store.writer():
        return indexer.update(index.root, index.store, runner, **kwargs)


def _stored(db: Path) -> dict[str, list]:
    """Every row an indexing run writes, keyed by path rather than by id (not the time)."""
    conn = sqlite3.connect(db)
    try:
        images = conn.execute(
            "select path, size, mtime_ns, hash, width, height, image_vector, caption_vector,"
            " concept_vector, class_confidence from images order by path"
        ).fetchall()
        captions = conn.execute(
            "select i.path, c.rank, c.caption_id, c.score from image_captions c"
            " join images i on i.id = c.image_id order by i.path, c.rank"
        ).fetchall()
        cursor = conn.execute(
            "select i.path, f.* from photo_facts f join images i on i.id = f.image_id"
            " order by i.path"
        )
        names = [d[0] for d in cursor.description]
        facts = [
            tuple(v for n, v in zip(names, row) if n != "image_id") for row in cursor.fetchall()
        ]
        skipped = conn.execute("select path, size, mtime_ns, reason from skipped").fetchall()
    finally:
        conn.close()
    return {"images": images, "captions": captions, "facts": facts, "skipped": skipped}


def test_the_writer_process_stores_what_the_writer_thread_stores(
    tmp_path: Path, small_bank: Path
) -> None:
    folder = _photos(tmp_path / "photos", 10)
    summaries, stored = {}, {}
    for chosen in (False, True):
        db = tmp_path / f"process-{chosen}.db"
        index = Index.create(folder, db, model="offline", captions=small_bank)
        reported: list = []
        summaries[chosen] = _add(index, chosen, on_skip=reported.append)
        assert [s.path for s in reported] == ["bad.jpg"]  # on_skip runs in this process
        index.close()
        stored[chosen] = _stored(db)
    assert (summaries[True].added, len(summaries[True].skipped)) == (10, 1)
    assert summaries[True].added == summaries[False].added
    assert summaries[True].skipped == summaries[False].skipped
    assert summaries[True].stages["write"] > 0  # the child's seconds, reported back
    assert len(stored[True]["images"]) == 10 and len(stored[True]["captions"]) == 200
    assert len(stored[True]["facts"]) == 10 and len(stored[True]["skipped"]) == 1
    assert stored[True] == stored[False]


def test_use_writer_process_only_beside_an_accelerator_for_long_runs(
    tmp_path: Path, small_bank: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = Index.create(_photos(tmp_path / "photos", 1), model="offline", captions=small_bank)
    many = indexer.WRITER_PROCESS_FILES
    monkeypatch.setattr(index.embedding, "on_cpu", lambda: False)
    assert not indexer.use_writer_process(index.embedding, many, index.store)  # off for now
    monkeypatch.setattr(indexer, "WRITER_PROCESS_AUTO", True)
    monkeypatch.setattr(index.embedding, "on_cpu", lambda: True)
    assert not indexer.use_writer_process(index.embedding, many, index.store)
    monkeypatch.setattr(index.embedding, "on_cpu", lambda: False)
    assert indexer.use_writer_process(index.embedding, many, index.store)
    assert not indexer.use_writer_process(index.embedding, many - 1, index.store)
    index.close()


# --- errors ---------------------------------------------------------------------------------


@contextmanager
def _no_room_after(db: Path, pages: int) -> Iterator[Callable[[tuple], None]]:
    """``put_images`` on ``db`` whose connections may not grow it past ``pages``: SQLite's
    own SQLITE_FULL, as a full disk gives it (the way tests/test_reliability.py makes it)."""
    store = Store.open(db)

    def no_room(connection, _record) -> None:  # noqa: ANN001 - DB-API connection
        connection.execute(f"PRAGMA max_page_count = {pages}")

    sa.event.listen(store.engine, "connect", no_room)
    try:
        yield lambda job: store.put_images(*job)
    finally:
        store.close()


def _records(batch: int, count: int) -> list[ImageRecord]:
    rng = np.random.default_rng(batch)
    return [
        ImageRecord(
            f"b{batch}-{i}.jpg",
            10,
            20,
            f"h{batch}-{i}",
            4,
            3,
            rng.random(1280, np.float32),
            rng.random(384, np.float32),
            list(range(20)),
            [1.0 - r / 20 for r in range(20)],
        )  # fmt: skip
        for i in range(count)
    ]


def _fill(stage: Stage | ProcessStage) -> BaseException:
    """Batches of 8 records put until the stage fails; the error, as put or close raise it."""
    with pytest.raises(BaseException) as raised:  # noqa: PT011 - compared below
        for batch in range(100):
            stage.put((_records(batch, 8), []))
        stage.close()
    with pytest.raises(type(raised.value)) as again:  # close raises it once more
        stage.close()
    assert str(again.value) == str(raised.value)
    return raised.value


def test_a_full_disk_in_the_writer_process_is_the_writer_threads_one_line(
    tmp_path: Path,
) -> None:
    errors, kept = {}, {}
    for chosen in (False, True):
        db = tmp_path / f"process-{chosen}" / "index.db"
        store = Store.open(db, create=True)
        with store.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar() + 40  # 2-3 batches
        store.close()
        if chosen:
            stage = ProcessStage("write", functools.partial(_no_room_after, db, pages), depth=2)
            error = _fill(stage)
            assert _gone(stage.pid)
        else:
            with _no_room_after(db, pages) as work:
                error = _fill(Stage("write", work))
        kept[chosen] = _whole_batches(db)
        errors[chosen] = (type(error), str(error).replace(str(db), "DB"))
    kind, message = errors[True]
    assert kind is ImgsearchError and "the disk is full" in message and "intact" in message
    assert "\n" not in message and "INSERT" not in message
    assert errors[True] == errors[False]
    assert kept[True] == kept[False] and kept[True] > 0


def _whole_batches(db: Path) -> int:
    """Batches kept: each one whole (8 images, 20 captions each), the failed one not at all."""
    paths = _whole_batches_of(db, 8)
    return len({p.split("-")[0] for p in paths})


def test_a_database_error_in_the_writer_process_stops_the_run_as_the_thread_would(
    tmp_path: Path, small_bank: Path
) -> None:
    """A real SQLite error mid-run (a trigger from a second connection refuses the ninth
    image): the run stops with the thread writer's exception, what was committed is whole,
    and the next run goes on from there."""
    folder = _photos(tmp_path / "photos", 20)
    raised = {}
    for chosen in (False, True):
        db = tmp_path / f"process-{chosen}.db"
        index = Index.create(folder, db, model="offline", captions=small_bank)
        with sqlite3.connect(db) as conn:
            conn.execute(
                "create trigger no_room before insert on images"
                " when (select count(*) from images) >= 8"
                " begin select raise(abort, 'no room for more images'); end"
            )
        with pytest.raises(sa.exc.DBAPIError) as error:
            _add(index, chosen)
        raised[chosen] = (type(error.value), str(error.value.orig))
        assert consistent_index(db) == 8  # two whole batches of 4
        with sqlite3.connect(db) as conn:
            conn.execute("drop trigger no_room")
        summary = _add(index, chosen)
        assert (summary.unchanged, summary.added) == (8, 12)
        index.close()
    assert raised[True] == raised[False] == (sa.exc.IntegrityError, "no room for more images")


# --- interrupted and killed -----------------------------------------------------------------

SCRIPT = """
import sys
from pathlib import Path

from imgsearch import Index, indexer


def main() -> None:
    folder, db, bank = map(Path, sys.argv[1:4])
    index = Index.create(folder, db, model="offline", captions=bank)
    runner = indexer.local_runner(index.root, index.embedding, 4, 1, writer_process=True)
    try:
        with index.store.writer():
            indexer.update(index.root, index.store, runner)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # ended, not yet reaped by whoever adopted it


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the child through /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_an_interrupted_or_killed_run_with_the_writer_process_leaves_a_whole_index(
    tmp_path: Path, small_bank: Path, how: str
) -> None:
    folder = tmp_path / "many"
    total = 480
    _many_photos(folder, total)
    db = tmp_path / "index.db"
    script = tmp_path / "index_with_writer_process.py"
    script.write_text(SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), str(folder), str(db), str(small_bank)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's Ctrl-C hits
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    deadline = time.time() + 120
    count = 0
    while time.time() < deadline and process.poll() is None and count < 8:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    count = conn.execute("select count(*) from images").fetchone()[0]
            except sqlite3.Error:
                count = 0
        time.sleep(0.05)
    assert process.poll() is None, "indexing ended before it could be interrupted"
    children = _children(process.pid)
    assert children, "no writer process"
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # the whole group, the child too
    else:
        process.kill()
    _, err = process.communicate(timeout=180)
    if how == "ctrl-c":
        assert process.returncode == 130 and "interrupted" in err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    else:
        assert process.returncode == -signal.SIGKILL
    deadline = time.time() + 30
    while time.time() < deadline and not all(map(_gone, children)):
        time.sleep(0.05)
    assert all(map(_gone, children)), "the writer process outlived its parent"
    saved = consistent_index(db)
    assert 8 <= saved < total
    index = Index.open(db)
    summary = index.add()
    assert summary.unchanged == saved and summary.added == total - saved
    assert index.store.count() == total
    index.close()


def test_a_writer_process_that_dies_is_one_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    Store.open(db, create=True).close()
    stage = ProcessStage("write", functools.partial(indexer._writing, db), depth=2)
    stage.put((_records(0, 2), []))
    os.kill(stage.pid, signal.SIGKILL)
    with pytest.raises(ImgsearchError, match="write process stopped unexpectedly"):
        for batch in range(1, 100):
            stage.put((_records(batch, 2), []))
            time.sleep(0.05)
        stage.close()
    stage.cancel()  # never raises, also after that
    _whole_batches_of(db, 2)


def _whole_batches_of(db: Path, size: int) -> list[str]:
    """Asserts the index holds whole batches of ``size`` images, 20 captions each; its paths."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        paths = [r[0] for r in conn.execute("select path from images")]
        captions = conn.execute("select count(*) from image_captions").fetchone()[0]
    finally:
        conn.close()
    assert len(paths) % size == 0 and captions == 20 * len(paths)
    return paths


@contextmanager
def _slow_writing(db: Path, seconds: float) -> Iterator[Callable[[tuple], None]]:
    with indexer._writing(db) as put:

        def slow(job: tuple) -> None:
            time.sleep(seconds)
            put(job)

        yield slow


def test_cancel_lets_the_batch_in_hand_finish_and_drops_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    Store.open(db, create=True).close()
    stage = ProcessStage("write", functools.partial(_slow_writing, db, 0.5), depth=3)
    for batch in range(3):
        stage.put((_records(batch, 8), []))
    time.sleep(0.2)
    stage.cancel()
    assert _gone(stage.pid)
    _whole_batches_of(db, 8)
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from images").fetchone()[0] <= 8
    stage.cancel()  # again: nothing happens


def test_a_stage_leaves_a_spare_child_that_the_next_one_takes(tmp_path: Path) -> None:
    """Starting a child took a second or more, which a short run waited for: a stage that
    closes leaves a spare (its opener's module imported), and the next stage of that name
    takes it and writes through it; a dead spare is passed over; a cancelled stage leaves
    none."""
    from imgsearch import pipeline

    first_db, second_db = tmp_path / "first.db", tmp_path / "second.db"
    for db in (first_db, second_db):
        Store.open(db, create=True).close()
    first = ProcessStage("spare-test", functools.partial(indexer._writing, first_db), depth=2)
    first.put((_records(0, 2), []))
    first.close()
    spare, _ = pipeline._SPARES["spare-test"]
    assert spare.is_alive() and spare.pid != first.pid
    second = ProcessStage("spare-test", functools.partial(indexer._writing, second_db), depth=2)
    assert second.pid == spare.pid and "spare-test" not in pipeline._SPARES
    second.put((_records(1, 3), []))
    second.close()
    assert len(_whole_batches_of(first_db, 2)) == 2 and len(_whole_batches_of(second_db, 3)) == 3
    left, _ = pipeline._SPARES["spare-test"]  # the one the second left: a dead spare is
    os.kill(left.pid, signal.SIGKILL)  # passed over, and the next stage starts its own
    left.join(10)
    third = ProcessStage("spare-test", functools.partial(indexer._writing, second_db), depth=2)
    assert third.pid != left.pid
    third.cancel()  # a cancelled stage leaves no spare: it ends a run
    assert "spare-test" not in pipeline._SPARES
    assert all(_gone(p) for p in (first.pid, second.pid, third.pid)) and not left.is_alive()
