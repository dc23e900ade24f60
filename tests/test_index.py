"""Indexing through the Python API: incremental runs, moves, bad files, interrupts, locks."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import imgsearch.models
from imgsearch import ImgsearchError, Index
from tests.conftest import consistent_index, ctrl_c_as_in_a_terminal, sample, write_photos


def make_index(root: Path, bank: Path, **kwargs) -> Index:
    return Index.create(root, model="offline", captions=bank, **kwargs)


def test_first_run_adds_every_image_and_stores_what_search_needs(photos: Path, small_bank: Path):
    with make_index(photos, small_bank) as index:
        summary = index.add()
        assert (summary.added, summary.updated, summary.removed) == (8, 0, 0)
        record = index.store.get(path="chelsea.jpg")
        assert record is not None
        assert record.image_vector.shape == (1280,)
        assert record.caption_vector.shape == (384,)
        assert len(record.caption_ids) == 20 and len(record.caption_scores) == 20
        assert record.caption_scores == sorted(record.caption_scores, reverse=True)
        # the stored caption vector is the softmax-weighted mean of the stored captions
        weights = np.exp((np.array(record.caption_scores) - record.caption_scores[0]) / 0.1)
        weights /= weights.sum()
        expected = weights @ index.bank.vectors[record.caption_ids]
        np.testing.assert_allclose(record.caption_vector, expected, atol=1e-6)
        assert (record.width, record.height) == sample("chelsea").size
    db = photos / ".imgsearch" / "index.db"
    assert db.is_file()
    rows = sqlite3.connect(db).execute("select path from images order by path").fetchall()
    assert [r[0] for r in rows] == sorted(p.name for p in photos.glob("*.jpg"))


def test_rerun_with_nothing_changed_does_not_load_the_model(
    photos: Path, small_bank: Path, monkeypatch: pytest.MonkeyPatch
):
    make_index(photos, small_bank).add()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(imgsearch.models, "load_model", no_model)
    index = Index.create(photos)
    summary = index.add()
    assert (summary.added, summary.updated, summary.unchanged) == (0, 0, 8)
    os.utime(photos / "coffee.jpg", ns=(1, 1))  # touched, content unchanged: hash says so
    summary = index.add()
    assert (summary.added, summary.updated, summary.unchanged) == (0, 0, 8)


def test_changes_deletions_and_renames(photos: Path, small_bank: Path, monkeypatch):
    index = make_index(photos, small_bank)
    index.add()
    chelsea_id = index.store.get(path="chelsea.jpg").id
    (photos / "sub").mkdir()
    (photos / "chelsea.jpg").rename(photos / "sub" / "cat.jpg")  # moved and renamed
    (photos / "rocket.jpg").unlink()
    (photos / "coffee.jpg").write_bytes((photos / "horse.jpg").read_bytes())  # new content
    sample("coins").rotate(90).save(photos / "new.png")
    loads = []
    real = index.model
    monkeypatch.setattr(type(index), "model", property(lambda self: loads.append(1) or real))
    summary = index.add()
    assert (summary.added, summary.updated, summary.moved, summary.removed) == (1, 1, 1, 1)
    moved = index.store.get(path="sub/cat.jpg")
    assert moved.id == chelsea_id  # the same row: not embedded again
    assert index.store.get(path="chelsea.jpg") is None
    assert index.store.get(path="rocket.jpg") is None
    horse = index.store.get(path="horse.jpg")
    np.testing.assert_allclose(
        index.store.get(path="coffee.jpg").image_vector, horse.image_vector, atol=1e-5
    )
    assert index.store.count() == 8


def test_bad_files_are_skipped_counted_and_remembered(photos: Path, small_bank: Path, monkeypatch):
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.png").write_text("hello")
    (photos / "cut.jpg").write_bytes((photos / "coffee.jpg").read_bytes()[:5000])
    index = make_index(photos, small_bank)
    seen = []
    summary = index.add(on_skip=seen.append)
    assert summary.added == 8
    reasons = {s.path: s.reason for s in summary.skipped}
    assert set(reasons) == {"empty.jpg", "text.png", "cut.jpg"}
    assert reasons["empty.jpg"] == "empty file" and reasons["text.png"] == "not an image"
    assert [s.path for s in seen] == sorted(reasons, key=[s.path for s in seen].index)
    assert index.store.count() == 8
    # A second run does not decode them again, so it needs no model.
    monkeypatch.setattr(type(index), "model", property(lambda self: pytest.fail("model loaded")))
    again = index.add()
    assert {s.path for s in again.skipped} == set(reasons) and again.added == 0


def test_paths_are_relative_so_a_moved_library_still_works(tmp_path: Path, small_bank: Path):
    library = tmp_path / "library"
    write_photos(library, ["chelsea", "coffee", "rocket"])
    make_index(library, small_bank).add()
    moved = tmp_path / "elsewhere" / "lib"
    moved.parent.mkdir()
    library.rename(moved)
    index = Index.open(moved / ".imgsearch" / "index.db")
    assert index.root == moved.resolve()
    hits = index.query(moved / "chelsea.jpg", k=5)
    assert {Path(h.path).parent for h in hits} == {moved.resolve()}
    assert index.add().unchanged == 3


def test_model_mismatch_is_refused(photos: Path, small_bank: Path, tiny_clip: Path):
    make_index(photos, small_bank).add()
    with pytest.raises(ImgsearchError, match="made with model 'offline'"):
        Index.create(photos, model=str(tiny_clip))
    with pytest.raises(ImgsearchError, match="made with model 'offline'"):
        Index.open(photos / ".imgsearch" / "index.db", model=str(tiny_clip))
    assert Index.open(photos / ".imgsearch" / "index.db").store.count() == 8


def test_a_second_writer_stops_with_a_clear_message(photos: Path, small_bank: Path):
    index = make_index(photos, small_bank)
    other = Index.create(photos)
    with index.store.writer(), pytest.raises(ImgsearchError, match="another imgsearch process"):
        other.add()
    assert other.add().added == 8


def _many_photos(folder: Path, count: int) -> None:
    folder.mkdir()
    base = [sample(n).resize((256, 256)) for n in ["chelsea", "coffee", "rocket", "astronaut"]]
    for i in range(count):
        image = base[i % 4].rotate(i * 7 % 360)
        image.save(folder / f"img{i:04d}.jpg", quality=80)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_leaves_a_consistent_index_and_the_next_run_goes_on(
    tmp_path: Path, small_bank: Path, how: signal.Signals
):
    folder = tmp_path / "many"
    total = 480  # enough that a loaded machine cannot finish between the check and the signal
    _many_photos(folder, total)
    db = tmp_path / "index.db"
    command = [
        sys.executable,
        "-m",
        "imgsearch.cli",
        "index",
        str(folder),
        "--db",
        str(db),
        "--model",
        "offline",
        "--captions",
        str(small_bank),
        "--batch-size",
        "4",
        "--workers",
        "1",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    deadline = time.time() + 120
    count = 0
    while time.time() < deadline and process.poll() is None:
        if db.exists():
            try:
                count = sqlite3.connect(db).execute("select count(*) from images").fetchone()[0]
            except sqlite3.Error:
                count = 0
            if count >= 8:
                break
        time.sleep(0.05)
    assert process.poll() is None, "indexing ended before it could be interrupted"
    process.send_signal(how)
    _, err = process.communicate(timeout=180)  # a loaded machine stops slower
    if how == signal.SIGINT:
        assert process.returncode == 130
        assert "interrupted" in err and "Traceback" not in err
    else:
        assert process.returncode == -signal.SIGKILL
    saved = consistent_index(db)  # whole: no orphan captions, 20 captions an image
    assert 8 <= saved < total
    index = Index.open(db)
    summary = index.add()
    assert summary.unchanged == saved and summary.added == total - saved
    assert index.store.count() == total


def test_search_index_is_saved_reused_and_rebuilt_when_stale(
    photos: Path, small_bank: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = photos / ".imgsearch" / "index.db"
    make_index(photos, small_bank).add()
    first = Index.open(db).query(photos / "chelsea.jpg", k=3)
    saved = db.with_name("index.db.concepts.vix")  # a new offline index ranks by concepts
    assert saved.is_file() and db.with_name("index.db.means.npz").is_file()

    # A new process loads both from disk: it never reads every vector from the database.
    reopened = Index.open(db)
    real_vectors = reopened.store.vectors

    def no_full_read(column: str):
        raise AssertionError(f"read every {column} from the database")

    monkeypatch.setattr(reopened.store, "vectors", no_full_read)
    assert reopened.query(photos / "chelsea.jpg", k=3) == first
    monkeypatch.setattr(reopened.store, "vectors", real_vectors)

    # A change makes the saved files stale: they are rebuilt, never used as they are.
    (photos / "copy.jpg").write_bytes((photos / "chelsea.jpg").read_bytes())
    assert reopened.add().added == 1
    hits = Index.open(db).query(photos / "chelsea.jpg", k=3)
    assert hits[0].path == str(photos / "copy.jpg")

    # A damaged file is rebuilt too.
    saved.write_bytes(b"not an index")
    assert Index.open(db).query(photos / "chelsea.jpg", k=3) == hits
    assert saved.read_bytes() != b"not an index"


def test_decoding_in_processes_gives_what_threads_give(photos: Path) -> None:
    """The GPU path decodes in worker processes; the bytes reaching the model must not differ."""
    from imgsearch.files import walk
    from imgsearch.indexer import _decoded
    from imgsearch.models.efficientnet import EFFICIENTNET_LITE0_PREPROCESS

    class Stub:  # only what the decode stage reads of a model
        preprocess = EFFICIENTNET_LITE0_PREPROCESS

    files = sorted(walk(photos), key=lambda f: f.path)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    files.append(next(f for f in walk(photos) if f.path == "broken.jpg"))
    threads = list(_decoded(photos, files, Stub(), workers=2, processes=False))
    processes = list(_decoded(photos, files, Stub(), workers=2, processes=True))
    assert [i.info.path for i in processes] == [f.path for f in files]
    for a, b in zip((t.pixels for t in threads), (p.pixels for p in processes)):
        assert (a.width, a.height, a.hash, a.error) == (b.width, b.height, b.hash, b.error)
        if a.array is None:
            assert b.array is None and a.error
        else:
            assert a.array.dtype == np.uint8 and a.array.shape == (224, 224, 3)
            np.testing.assert_array_equal(a.array, b.array)
    assert sum(i.pixels.array is None for i in processes) == 1


def test_an_index_of_schema_3_loses_its_caption_index_and_keeps_its_captions(
    photos: Path, small_bank: Path
) -> None:
    """Schema 4 drops the caption_id index nothing used (it slowed every write); the
    captions themselves stay as they were."""
    from imgsearch.storage import SCHEMA_VERSION, Store

    with make_index(photos, small_bank) as index:
        index.add()
        db = index.store.path
        before = index.store.get(path="chelsea.jpg")
    with sqlite3.connect(db) as conn:  # what imgsearch made before schema 4
        conn.execute("CREATE INDEX ix_image_captions_caption_id ON image_captions (caption_id)")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    store = Store.open(db)
    try:
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION) == "4"
        after = store.get(path="chelsea.jpg")
    finally:
        store.close()
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "ix_image_captions_caption_id" not in names
    assert after is not None and before is not None
    assert (after.caption_ids, after.caption_scores) == (before.caption_ids, before.caption_scores)
